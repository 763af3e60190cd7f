"""A site's differential-privacy budget: an append-only, hash-chained log of what each release cost.

Side: site (under ``privacy/``; only the site executor builds one).

Costs are zCDP ρ (they add up). A site keeps, per dataset, what each researcher spent and what
all researchers spent together, and refuses a release that would take either over its policy's
cap (``dp_rho_researcher``, ``dp_rho_site``: the second bounds colluding researchers, who could
otherwise pool their budgets). The decision depends on the log only, never on the data. One
federated release costs ρ at every site of it (a patient belongs to one site), not K·ρ.

With a path, every charge is a JSON line (its number, time, researcher, dataset, ρ, query and
analysis, the previous line's hash and its own), appended and fsynced before the reply leaves; a
site that restarts reads the log back and checks the chain, so a researcher's budget survives
restarts and an edited, removed or reordered line stops the site's DP releases with a clear error.
Several processes may keep the same site's log (a kernel and the Jupyter server's view of a
federation file): each reads the lines the others appended, under a lock on the file, before it
answers or appends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhem_kernel.errors import DisclosureError, SchemaError
from fedhem_kernel.privacy.dp import epsilon

GENESIS = "0" * 64
#: Costs are compared with this much slack (sums of floats).
SLACK = 1e-12


@dataclass(frozen=True)
class Spent:
    """What a researcher spent on a dataset at a site, and what everyone spent, against the caps."""

    researcher: float
    researcher_cap: float
    site: float
    site_cap: float

    @property
    def left(self) -> float:
        """What the researcher may still spend (the smaller of the two margins)."""
        return max(0.0, min(self.researcher_cap - self.researcher, self.site_cap - self.site))

    def to_dict(self) -> dict[str, float]:
        return {
            "rho_spent": self.researcher,
            "rho_cap": self.researcher_cap,
            "rho_site_spent": self.site,
            "rho_site_cap": self.site_cap,
            "rho_left": self.left,
            "epsilon_spent": epsilon(self.researcher),
            "epsilon_cap": epsilon(self.researcher_cap),
        }


def _digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


class BudgetLedger:
    """One site's DP budget log (in memory, or appended to ``path``)."""

    def __init__(
        self,
        site: str,
        researcher_cap: float,
        site_cap: float,
        path: Path | None = None,
    ) -> None:
        self.site = site
        self.researcher_cap = float(researcher_cap)
        self.site_cap = float(site_cap)
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._by_researcher: dict[tuple[str, str], float] = defaultdict(float)
        self._by_dataset: dict[str, float] = defaultdict(float)
        self._last = GENESIS
        self._count = 0
        self._offset = 0  # bytes of the log already read
        with self._file_lock(shared=True):
            pass

    @contextmanager
    def _file_lock(self, shared: bool) -> Iterator[None]:
        """This process's lock, and (with a path) the file's: then the lines other processes
        appended since are read first."""
        with self._lock:
            if self.path is None:
                yield
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                try:
                    self._catch_up(fh)
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _catch_up(self, fh: Any) -> None:
        fh.seek(self._offset)
        for line in fh:
            if not line.endswith("\n"):
                break  # a torn line (a writer killed mid-line): cut off before the next append
            self._take(line)
            self._offset += len(line.encode("utf-8"))

    def _take(self, line: str) -> None:
        number = self._count + 1
        try:
            entry = json.loads(line)
            own = entry.pop("hash")
            ok = entry["n"] == number and entry["prev"] == self._last and _digest(entry) == own
            rho, who, dataset = float(entry["rho"]), entry["who"], entry["dataset"]
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise SchemaError(
                f"the DP budget log is damaged at entry {number} (an entry was altered, "
                "removed or reordered): restore it from a backup",
                site=self.site,
                rule="budget",
            )
        self._by_researcher[who, dataset] += rho
        self._by_dataset[dataset] += rho
        self._last, self._count = own, number

    def spent(self, who: str, dataset: str) -> Spent:
        with self._file_lock(shared=True):
            return self._spent(who, dataset)

    def _spent(self, who: str, dataset: str) -> Spent:
        return Spent(
            self._by_researcher[who, dataset],
            self.researcher_cap,
            self._by_dataset[dataset],
            self.site_cap,
        )

    def check(self, who: str, dataset: str, rho: float) -> Spent:
        """Refuse (``DisclosureError``, rule ``budget``) if ``rho`` more would exceed a cap."""
        with self._file_lock(shared=True):
            spent = self._spent(who, dataset)
        self._refuse_over(spent, rho, dataset)
        return spent

    def _refuse_over(self, spent: Spent, rho: float, dataset: str) -> None:
        if spent.researcher + rho > spent.researcher_cap + SLACK:
            raise DisclosureError(
                f"your privacy budget for this dataset at this site is spent (ρ {spent.researcher:.3g}"
                f" of {spent.researcher_cap:.3g}; this release needs {rho:.3g})",
                site=self.site,
                dataset=dataset,
                rule="budget",
            )
        if spent.site + rho > spent.site_cap + SLACK:
            raise DisclosureError(
                f"the site's privacy budget for this dataset is spent, by all researchers together "
                f"(ρ {spent.site:.3g} of {spent.site_cap:.3g})",
                site=self.site,
                dataset=dataset,
                rule="budget",
            )

    def charge(
        self, who: str, dataset: str, rho: float, *, query: str = "", analysis: str = ""
    ) -> Spent:
        """Record a release's cost (written and fsynced first); refused if over a cap."""
        with self._file_lock(shared=False):
            self._refuse_over(self._spent(who, dataset), rho, dataset)
            entry = {
                "n": self._count + 1,
                "time": time.time(),
                "who": who,
                "dataset": dataset,
                "rho": float(rho),
                "query": query,
                "analysis": analysis,
                "prev": self._last,
            }
            line = json.dumps({**entry, "hash": _digest(entry)}, sort_keys=True) + "\n"
            if self.path is not None:
                if self.path.stat().st_size > self._offset:
                    # under the exclusive lock, bytes after the last whole line are a line a
                    # killed writer did not finish (its release never left): cut them off
                    with open(self.path, "r+b") as fh:
                        fh.truncate(self._offset)
                        fh.flush()
                        os.fsync(fh.fileno())
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                self._offset += len(line.encode("utf-8"))
            self._take(line)
            return self._spent(who, dataset)
