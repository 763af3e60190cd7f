"""Errors that may cross the trust boundary.

Every message names *where* (site, dataset, column) and *which rule*, never a patient value.
Constructors take those parts separately so that the message format is the same everywhere and
so that tests can check the parts without parsing text.
"""

from __future__ import annotations


class FedHemError(Exception):
    """Base class of every FedHem error."""

    def __init__(
        self,
        message: str,
        *,
        site: str | None = None,
        dataset: str | None = None,
        column: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.reason = message
        self.site = site
        self.dataset = dataset
        self.column = column
        self.rule = rule
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.site:
            where.append(f"site '{self.site}'")
        if self.dataset:
            where.append(f"dataset '{self.dataset}'")
        if self.column:
            where.append(f"column '{self.column}'")
        prefix = ", ".join(where)
        rule = f" [rule: {self.rule}]" if self.rule else ""
        return f"{prefix}: {self.reason}{rule}" if prefix else f"{self.reason}{rule}"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "type": type(self).__name__,
            "reason": self.reason,
            "site": self.site,
            "dataset": self.dataset,
            "column": self.column,
            "rule": self.rule,
        }

    def with_site(self, site: str) -> FedHemError:
        """The same error, attributed to ``site`` (used when a site step raises)."""
        return type(self)(
            self.reason, site=site, dataset=self.dataset, column=self.column, rule=self.rule
        )


class DisclosureError(FedHemError):
    """A privacy rule refused the query (at one site, or at every site)."""


class SchemaError(FedHemError, ValueError):
    """Bad input data or a query that does not fit the dataset's schema."""


class FilterError(FedHemError, ValueError):
    """A malformed or disallowed ``where=`` expression."""


class ParameterError(FedHemError, ValueError):
    """A query parameter that is not valid for the analysis."""


ERROR_TYPES: dict[str, type[FedHemError]] = {
    cls.__name__: cls
    for cls in (FedHemError, DisclosureError, SchemaError, FilterError, ParameterError)
}


def error_from_dict(data: dict[str, str | None]) -> FedHemError:
    cls = ERROR_TYPES.get(str(data.get("type")), FedHemError)
    return cls(
        str(data.get("reason") or "error"),
        site=data.get("site"),
        dataset=data.get("dataset"),
        column=data.get("column"),
        rule=data.get("rule"),
    )
