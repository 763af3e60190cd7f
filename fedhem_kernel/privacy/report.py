"""What each site released, suppressed or refused, and under which rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any, Literal

Status = Literal["released", "suppressed", "refused", "error"]


@dataclass
class ReleaseLog:
    """Collects, at the site, the suppressions applied while a release is prepared."""

    suppressions: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def suppressed(self, rule: str, detail: str) -> None:
        self.suppressions.append({"rule": rule, "detail": detail})

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass(frozen=True)
class SiteOutcome:
    """The privacy outcome of one query at one site."""

    site: str
    status: Status
    rules: tuple[str, ...] = ()
    details: tuple[str, ...] = ()

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

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for o in self.outcomes:
            if not o.details:
                rows.append({"site": o.site, "outcome": o.status, "rule": "", "detail": ""})
            for rule, detail in zip(o.rules, o.details, strict=False):
                rows.append({"site": o.site, "outcome": o.status, "rule": rule, "detail": detail})
        return pd.DataFrame(rows, columns=["site", "outcome", "rule", "detail"])

    def __repr__(self) -> str:
        parts = [f"{o.site}: {o.status}" for o in self.outcomes]
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
            detail = "<br>".join(
                f"<b>{escape(r)}</b>: {escape(d)}" for r, d in zip(o.rules, o.details, strict=False)
            )
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
