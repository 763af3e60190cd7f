"""What every analysis result has, written once: the privacy report, a summary table, text and rich
display.

A result holds released numbers only. How it looks is not here: renderers are registered by result
type in :mod:`fedhem_kernel.display.render` (imported when a result is first shown, never when a
result module is imported), with a generic one for any result (its title, summary table, footnote
and privacy report), so a new analysis displays without writing display code.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from fedhem_kernel.protocol.report import PrivacyReport


class Result:
    """Base of every analysis result (a frozen dataclass with a ``privacy`` field).

    Subclasses provide ``summary``, their main table (a field or a property: lifelines' name), and
    may refine :attr:`title`, :attr:`footnote`, :meth:`tables` and :meth:`_headline`. A result
    without ``summary`` shows its plain fields (numbers and names) as its table.
    """

    privacy: PrivacyReport

    # -- what the result says ----------------------------------------------------------------
    @property
    def main_table(self) -> pd.DataFrame:
        """``summary``, or for a result without one its plain fields as a one-column table."""
        summary = getattr(self, "summary", None)
        if isinstance(summary, pd.DataFrame):
            return summary
        plain = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if isinstance(getattr(self, f.name), int | float | str | bool)
        }
        return pd.DataFrame({"value": list(plain.values())}, index=list(plain), dtype=object)

    @property
    def title(self) -> str:
        """One line naming the analysis and the dataset."""
        return f"{self.privacy.analysis} on '{self.privacy.dataset}'"

    @property
    def footnote(self) -> str:
        """How to read the numbers (what was coarsened, merged or approximated)."""
        return ""

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        """Further tables shown below the summary, as (caption, table)."""
        return []

    def _headline(self) -> str:
        """The key numbers in one line, for the text form."""
        return ""

    # -- in plain Python -------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """The summary table as a new DataFrame (a suppressed number is NA)."""
        return self.main_table.copy()

    def print_summary(self, decimals: int = 4, file: IO[str] | None = None) -> None:
        """Print the title, the summary table, the footnote and what each site released."""
        out = file if file is not None else sys.stdout
        fmt = f"{{:.{decimals}g}}".format
        lines = [self.title, "", self.main_table.to_string(float_format=fmt)]
        for caption, table in self.tables():
            lines += ["", caption, table.to_string(float_format=fmt)]
        if self.footnote:
            lines += ["", self.footnote]
        lines += ["", "Privacy report:"]
        for o in self.privacy.outcomes:
            rules = "; ".join(f"{d.rule}: {d.text}" for d in o.entries)
            lines.append(f"  {o.site}: {o.status}" + (f" ({rules})" if rules else ""))
        lines += [f"  note: {n}" for n in self.privacy.notes]
        print("\n".join(lines), file=out)

    def __repr__(self) -> str:
        head = self._headline()
        return (
            f"{type(self).__name__}({head}{chr(10) if head else ''}"
            f"{self.main_table.to_string()}\n{self.privacy!r})"
        )

    # -- in a notebook ---------------------------------------------------------------------------
    def widget(self, **options: Any) -> Any:
        """This result as an interactive widget (anywidget): its numbers and the privacy panel."""
        from fedhem_kernel.display.render import render

        return render("widget", self, **options)

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.render import render

        return render("html", self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)


def time_grid(time_step: float | None, unit: str | None, where: str = "a grid") -> str:
    """How a survival result's times were released, for its footnote: "exact times" or e.g.
    "times on a grid of 3 months"."""
    if time_step is None:
        return "exact times"
    unit = unit or "units"
    if time_step == 1 and unit.endswith("s"):
        unit = unit[:-1]  # "1 month", not "1 months"
    return f"times on {where} of {time_step:g} {unit}"
