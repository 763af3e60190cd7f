"""What each site released, suppressed or refused, and under which rule.

A site collects :class:`Detail` records in a :class:`ReleaseLog` while it prepares a release (they
cross with its reply); the coordinator gathers them per site into a :class:`PrivacyReport`, which
every result carries as ``.privacy``. A detail is structured (rule, group, action, counts) so that
displays read its fields, never its wording; its text is for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any, Literal

Status = Literal["released", "suppressed", "refused", "error"]

#: What a site did, as :attr:`Detail.action` says it.
ACTIONS = ("merged", "withheld", "suppressed", "left_out", "refused", "error")


@dataclass(frozen=True)
class Detail:
    """One rule a site applied to a release, or the reason it refused.

    Parameters
    ----------
    rule : str
        The policy rule (``"min_cell_count"``, ``"differencing"``, ...) or error kind.
    text : str
        The same in plain words (names sites, datasets, columns and groups; never a value).
    group : str, optional
        The group (or stratum, or variable) of the result it concerns.
    action : str, optional
        What the site did: one of :data:`ACTIONS` (``"merged"`` steps, ``"withheld"`` a group,
        ``"suppressed"`` cells, ``"left_out"`` rows, ``"refused"``, ``"error"``).
    counts : mapping of str to int
        Numbers the display may show, e.g. ``{"steps": 3, "k": 5}`` for merged time steps. Never a
        count of patients below the threshold.
    """

    rule: str
    text: str
    group: str | None = None
    action: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (a plain dict; ``detail`` is the text)."""
        out: dict[str, Any] = {"rule": self.rule, "detail": self.text}
        if self.group is not None:
            out["group"] = self.group
        if self.action is not None:
            out["action"] = self.action
        if self.counts:
            out["counts"] = dict(self.counts)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detail:
        """Strict: a record from a site is checked field by field (a site may be mistaken)."""
        rule, text = data.get("rule"), data.get("detail")
        group, action = data.get("group"), data.get("action")
        counts = data.get("counts", {})
        ok = (
            isinstance(rule, str)
            and isinstance(text, str)
            and (group is None or isinstance(group, str))
            and (action is None or action in ACTIONS)
            and isinstance(counts, Mapping)
            and all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in counts.items()
            )
            and set(data) <= {"rule", "detail", "group", "action", "counts"}
        )
        if not ok:
            raise ValueError("malformed release detail")
        return cls(rule, text, group, action, dict(counts))


@dataclass
class ReleaseLog:
    """Collects, at the site, what was suppressed while a release is prepared, and notes."""

    suppressions: list[Detail] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def suppressed(
        self,
        rule: str,
        detail: str,
        *,
        group: str | None = None,
        action: str = "suppressed",
        **counts: int,
    ) -> None:
        """Record that ``rule`` changed the release (``detail`` in plain words)."""
        self.suppressions.append(Detail(rule, detail, group, action, counts))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass(frozen=True)
class SiteOutcome:
    """The privacy outcome of one query at one site: its status and the details, in order."""

    site: str
    status: Status
    entries: tuple[Detail, ...] = ()
    #: DP mode: the researcher's budget at this site after the query (``rho_spent``, ``rho_cap``,
    #: ``rho_left``, ``epsilon_spent``, ...: :meth:`fedhem_kernel.privacy.budget.Spent.to_dict`).
    budget: Mapping[str, float] | None = None

    @property
    def rules(self) -> tuple[str, ...]:
        """The rule of each detail."""
        return tuple(d.rule for d in self.entries)

    @property
    def details(self) -> tuple[str, ...]:
        """Each detail in plain words."""
        return tuple(d.text for d in self.entries)

    @property
    def released(self) -> bool:
        return self.status in ("released", "suppressed")


@dataclass(frozen=True)
class PrivacyReport:
    """Per site: released / suppressed / refused, with the rule and a reason in plain words."""

    analysis: str
    dataset: str
    outcomes: tuple[SiteOutcome, ...]
    notes: tuple[str, ...] = ()

    @property
    def released_sites(self) -> list[str]:
        return [o.site for o in self.outcomes if o.released]

    @property
    def refused_sites(self) -> list[str]:
        return [o.site for o in self.outcomes if not o.released]

    def outcome(self, site: str) -> SiteOutcome:
        for o in self.outcomes:
            if o.site == site:
                return o
        raise KeyError(site)

    @property
    def budget(self) -> Any:
        """DP mode: per site, the researcher's budget after this query (a DataFrame: spent, cap
        and left in ρ, spent and cap as ε at δ = 1e-5); empty when no site keeps one."""
        import pandas as pd

        rows = [{"site": o.site, **o.budget} for o in self.outcomes if o.budget]
        return pd.DataFrame(rows).set_index("site") if rows else pd.DataFrame()

    def to_frame(self) -> Any:
        """One row per site and detail: site, outcome, rule, detail, group."""
        import pandas as pd

        rows = []
        for o in self.outcomes:
            if not o.entries:
                rows.append(
                    {"site": o.site, "outcome": o.status, "rule": "", "detail": "", "group": None}
                )
            for d in o.entries:
                rows.append(
                    {
                        "site": o.site,
                        "outcome": o.status,
                        "rule": d.rule,
                        "detail": d.text,
                        "group": d.group,
                    }
                )
        return pd.DataFrame(rows, columns=["site", "outcome", "rule", "detail", "group"])

    def __repr__(self) -> str:
        parts = [
            f"{o.site}: {o.status}"
            + (f" (ρ {o.budget['rho_spent']:.3g} of {o.budget['rho_cap']:.3g})" if o.budget else "")
            for o in self.outcomes
        ]
        return f"PrivacyReport({self.analysis} on '{self.dataset}': " + "; ".join(parts) + ")"

    def _repr_html_(self) -> str:
        colours = {
            "released": "#1b7f3b",
            "suppressed": "#a86400",
            "refused": "#b00020",
            "error": "#b00020",
        }
        rows = []
        for o in self.outcomes:
            badge = (
                f'<span style="color:white;background:{colours[o.status]};padding:1px 6px;'
                f'border-radius:8px;font-size:0.85em">{o.status}</span>'
            )
            detail = "<br>".join(f"<b>{escape(d.rule)}</b>: {escape(d.text)}" for d in o.entries)
            if o.budget:
                b = o.budget
                spent = (
                    f"<b>DP budget</b>: ρ {b['rho_spent']:.3g} of {b['rho_cap']:.3g} spent "
                    f"(ε {b['epsilon_spent']:.2f} of {b['epsilon_cap']:.2f} at δ = 1e-5); "
                    f"ρ {b['rho_left']:.3g} left"
                )
                detail = f"{detail}<br>{spent}" if detail else spent
            rows.append(
                f"<tr><td>{escape(o.site)}</td><td>{badge}</td>"
                f"<td style='text-align:left'>{detail or '&mdash;'}</td></tr>"
            )
        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        return (
            '<div class="fedhem-privacy"><b>Privacy report</b>'
            "<table><thead><tr><th>site</th><th>outcome</th><th>rules applied</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            + (f"<ul style='margin:2px 0'>{notes}</ul>" if notes else "")
            + "</div>"
        )
