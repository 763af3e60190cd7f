"""The site's audit log: one JSON line per request, release, suppression, refusal or error.

An entry is written (and flushed to disk) before the reply leaves the site. Entries hold the query
(analysis, dataset, parameters, filter text), the outcome and the rule, never a patient value.

On disk the log is a *hash chain*: each line carries its number (``seq``), the hash of the line
before it (``prev``; 64 zeros for the first) and its own hash (``hash``: SHA-256 of the line's
canonical JSON without ``hash``). A sidecar ``<log>.head`` holds the number of entries and the
last hash, replaced atomically after each entry. :func:`verify` (``fedhem audit verify``) finds an
entry altered (its hash), removed or reordered (a ``prev`` or ``seq`` that does not follow) and
entries removed from the end (the head points past the log). A site killed mid-write leaves at
most one torn last line: the next start drops it (its reply never left) and brings the head up to
date, so the chain verifies again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: ``prev`` of the first entry.
GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev", "hash")


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str, sort_keys=True, separators=(",", ":"))


def entry_hash(record: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON, its ``hash`` field left out."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """Append-only JSON-lines log (a hash chain on disk), also kept in memory for the embedded
    federation."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last = GENESIS
        self._count = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._recover()

    def _recover(self) -> None:
        """Continue the chain of an existing log: a torn last line (a crash mid-write, so its
        reply never left) is cut off, and the head brought up to the last whole entry."""
        assert self.path is not None
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        window = 1 << 16
        with open(self.path, "rb") as fh:  # only the end of the log: it can be long
            while True:
                start = max(0, size - window)
                fh.seek(start)
                data = fh.read()
                end = data.rfind(b"\n")  # the end of the last whole line
                begin = data.rfind(b"\n", 0, max(end, 0)) + 1
                if start == 0 or (end >= 0 and begin > 0):
                    break
                window *= 4  # the last whole line starts before this window
        keep = start + end + 1  # a torn rest after the last newline is cut off
        if end >= 0:
            try:
                last = json.loads(data[begin:end])
            except ValueError:  # a whole line that is not JSON: left to verify to name
                last = None
            if isinstance(last, dict) and isinstance(last.get("hash"), str):
                self._last = last["hash"]
                self._count = int(last.get("seq", 0)) + 1
        if keep < size:
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        self._write_head()

    def _write_head(self) -> None:
        assert self.path is not None
        head = head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"count": self._count, "hash": self._last}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, head)
        _fsync_dir(head)

    def append(self, **entry: Any) -> dict[str, Any]:
        record = {"when": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry}
        with self._lock:
            self._entries.append(record)
            if self.path is not None:
                chained = json.loads(_canonical(record))  # what the line holds, as read back
                chained["seq"], chained["prev"] = self._count, self._last
                chained["hash"] = entry_hash(chained)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(chained, default=str) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                self._last, self._count = chained["hash"], self._count + 1
                self._write_head()
        return record

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``ok``, the number of whole entries, and the first problem
    (its 1-based line, and why) when not ok."""

    ok: bool
    entries: int
    line: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.entries} entries, the chain is intact"
        return f"line {self.line}: {self.reason}"


def verify(path: str | Path) -> Verdict:
    """Check an audit log's hash chain and its head (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        return Verdict(False, 0, 0, "no audit log at this path")
    prev, n = GENESIS, 0
    hashes = [GENESIS]  # hashes[i]: the hash after i entries
    with open(path, "rb") as fh:
        data = fh.read()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            torn = number == data.count(b"\n") + 1  # the last line, without its newline
            why = "a torn last line (the site will drop it on start)" if torn else "not JSON"
            return Verdict(False, n, number, why)
        if not isinstance(record, dict) or not all(f in record for f in CHAIN_FIELDS):
            return Verdict(False, n, number, "an entry without its chain fields")
        if record["hash"] != entry_hash(record):
            return Verdict(False, n, number, "the entry was altered (its hash does not match)")
        if record["prev"] != prev or record["seq"] != n:
            return Verdict(
                False, n, number, "an entry before this one was removed, or entries reordered"
            )
        prev, n = record["hash"], n + 1
        hashes.append(prev)
    head = head_path(path)
    try:
        recorded = json.loads(head.read_text(encoding="utf-8"))
        count, last = int(recorded["count"]), str(recorded["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return Verdict(False, n, None, "the head file is missing or unreadable")
    if count > n:
        return Verdict(False, n, n + 1, f"{count - n} entries were removed from the end")
    # a crash between an entry and its head leaves the head one behind (brought up on start)
    if n - count > 1 or last != hashes[count]:
        return Verdict(False, n, count + 1, "the head does not match the log")
    return Verdict(True, n)
