"""The researcher's query activity: one JSON line per query with its privacy outcome.

The kernel (or any :class:`~fedhem_kernel.Federation`) appends an entry when a query finishes; the
Jupyter server extension reads the same file to show the sidebar's activity list. An entry holds what the
researcher asked (analysis, dataset, filter text) and what each site did (released / suppressed / refused /
error, with the rules), never a released or patient value.

Where the file lives: ``FEDHEM_ACTIVITY`` if set (``off`` turns recording off), otherwise
``<jupyter data dir>/fedhem/activity.jsonl`` (per user: on JupyterHub every user has their own home).
"""

from __future__ import annotations

import getpass
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedhem_kernel.errors import DisclosureError, FedHemError
from fedhem_kernel.protocol.report import PrivacyReport

_TAIL_BYTES = 1 << 20  # read at most the last MiB: plenty for the newest few hundred queries
_KEEP_BYTES = 4 << 20  # rewrite the file to its newest half once it passes this size


def default_user() -> str:
    """Who is asking: ``FEDHEM_USER``, else the JupyterHub user, else the login name."""
    try:
        return (
            os.environ.get("FEDHEM_USER") or os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
        )
    except OSError:
        return "researcher"


def default_activity_path() -> Path | None:
    """The activity file for this user, or None when ``FEDHEM_ACTIVITY=off``."""
    value = os.environ.get("FEDHEM_ACTIVITY", "").strip()
    if value.lower() in ("off", "none", "0", "false"):
        return None
    if value:
        return Path(value).expanduser()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "fedhem" / "activity.jsonl"


def overall_outcome(report: PrivacyReport) -> str:
    """One word for a query: released (all sites), suppressed (some withheld), refused, or error."""
    statuses = {o.status for o in report.outcomes}
    if statuses <= {"released"}:
        return "released"
    if any(o.released for o in report.outcomes):
        return "suppressed"
    if statuses == {"error"}:
        return "error"
    return "refused"


class ActivityLog:
    """Append-only JSON-lines file of queries; safe to read while another process appends."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> ActivityLog:
        return cls(default_activity_path())

    def record(
        self,
        *,
        query_id: str,
        user: str,
        analysis: str,
        dataset: str,
        where: str | None,
        report: PrivacyReport | None = None,
        error: FedHemError | None = None,
        federation: str | None = None,
    ) -> dict[str, Any] | None:
        """Append one finished query; returns the entry (None when recording is off)."""
        if error is None:
            outcome = overall_outcome(report) if report is not None else "released"
        elif isinstance(error, DisclosureError):
            outcome = "refused"
        else:
            outcome = "error"  # bad input or a failing site: nothing was released
        entry: dict[str, Any] = {
            "query_id": query_id,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "user": user,
            "federation": federation,
            "analysis": analysis,
            "dataset": dataset,
            "where": where,
            "outcome": outcome,
            "sites": {o.site: o.status for o in report.outcomes} if report is not None else {},
            "rules": sorted({r for o in report.outcomes for r in o.rules}) if report else [],
            "message": str(error) if error is not None else None,
        }
        if error is not None and error.rule and error.rule not in entry["rules"]:
            entry["rules"].append(error.rule)
        if self.path is None:
            return None
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                if self.path.stat().st_size > _KEEP_BYTES:
                    self._shrink()
            except OSError:
                return None  # the activity list is a convenience: never fail a query over it
        return entry

    def _shrink(self) -> None:
        assert self.path is not None
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(lines[len(lines) // 2 :]), encoding="utf-8")
        os.replace(tmp, self.path)

    def read(self, user: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` entries (of ``user`` if given), newest first."""
        if self.path is None or not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
        lines = data.decode("utf-8", errors="replace").splitlines()
        if size > _TAIL_BYTES:
            lines = lines[1:]  # the first line may be cut
        entries = []
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if not isinstance(entry, dict):
                continue
            if user is not None and entry.get("user") != user:
                continue
            entries.append(entry)
            if len(entries) >= limit:
                break
        return entries
