"""The site's audit log: one JSON line per request, release, suppression, refusal or error.

An entry is written (and flushed) before the reply leaves the site. Entries hold the query (analysis,
dataset, parameters, filter text), the outcome and the rule, never a patient value.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    """Append-only JSON-lines log, also kept in memory for the embedded federation."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, **entry: Any) -> dict[str, Any]:
        record = {"when": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry}
        line = json.dumps(record, default=str, sort_keys=False) if self.path is not None else ""
        with self._lock:
            self._entries.append(record)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        return record

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)
