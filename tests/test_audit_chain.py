"""The site's audit log as a hash chain: ``fedhem audit verify`` finds an entry altered, removed or
reordered, and a site killed mid-write restarts with a log that verifies (site/audit.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.__main__ import main
from fedhem_kernel.site.audit import AuditLog, head_path, verify


def write_log(path: Path, n: int = 6) -> list[str]:
    log = AuditLog(path)
    for i in range(n):
        log.append(query=f"q{i}", outcome="released", analysis="describe", value=i)
    return path.read_text().splitlines()


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def site_files(tmp_path: Path, df: pd.DataFrame, extra: str = "") -> tuple[Path, Path]:
    """A one-site federation on ``df`` with an audit log: the site's config and the federation's."""
    df.to_csv(tmp_path / "aml.csv", index=False)
    site = tmp_path / "site_a.toml"
    site.write_text(
        '[site]\nname = "site_a"\naudit_log = "audit/site_a.jsonl"\n'
        f'{extra}[datasets.aml]\npath = "aml.csv"\n'
    )
    federation = tmp_path / "federation.toml"
    federation.write_text('[sites.site_a]\nconfig = "site_a.toml"\n')
    return site, federation


def test_an_intact_chain_verifies_and_continues_after_a_restart(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    assert verify(path).ok and verify(path).entries == 6
    first = json.loads(lines[0])
    assert first["seq"] == 0 and first["prev"] == "0" * 64
    assert json.loads(lines[1])["prev"] == first["hash"]
    AuditLog(path).append(query="after restart", outcome="released")
    assert verify(path).ok and verify(path).entries == 7


def test_an_altered_entry_is_found_even_when_its_hash_is_recomputed(tmp_path):
    from fedhem_kernel.site.audit import entry_hash

    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    entry = json.loads(lines[2])
    entry["outcome"] = "refused"
    rewrite(path, [*lines[:2], json.dumps(entry), *lines[3:]])
    verdict = verify(path)
    assert not verdict.ok and verdict.line == 3 and "altered" in verdict.reason
    entry["hash"] = entry_hash(entry)  # an editor who knows the scheme
    rewrite(path, [*lines[:2], json.dumps(entry), *lines[3:]])
    verdict = verify(path)
    assert not verdict.ok and verdict.line == 4 and "removed" in verdict.reason


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (lambda ls: ls[:2] + ls[3:], 3, "removed"),  # one from the middle
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "reordered"),
        (lambda ls: ls[:-2], 5, "removed from the end"),
        (lambda ls: ls[1:], 1, "removed"),  # the first
    ],
    ids=["middle", "reordered", "tail", "first"],
)
def test_entries_removed_or_reordered_are_found(tmp_path, edit, line, words):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    rewrite(path, edit(lines))
    verdict = verify(path)
    assert not verdict.ok and verdict.line == line and words in verdict.reason, verdict


def test_a_torn_last_line_is_dropped_on_start(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    with open(path, "a") as fh:
        fh.write('{"when": "2026-12-08", "query": "q')  # a crash mid-write: no newline
    assert not verify(path).ok and "torn" in verify(path).reason
    AuditLog(path)  # the site starts again
    assert verify(path).ok and verify(path).entries == 4
    # a crash between an entry and its head leaves the head one behind: still a valid chain
    head = json.loads(head_path(path).read_text())
    AuditLog(path).append(query="one more", outcome="released")
    head_path(path).write_text(json.dumps(head))
    assert verify(path).ok


WRITER = """
import sys
from fedhem_kernel.site.audit import AuditLog
log = AuditLog(sys.argv[1])
print("ready", flush=True)
for i in range(100_000):
    log.append(query=f"q{i}", outcome="released", filler="x" * 2000)
"""


def test_a_writer_killed_at_random_points_leaves_a_log_that_verifies_after_restart(tmp_path):
    path = tmp_path / "audit.jsonl"
    for delay in (0.05, 0.11, 0.23, 0.31, 0.47):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        before = path.stat().st_size
        AuditLog(path)  # restart: a torn line dropped, the head caught up
        verdict = verify(path)
        assert verdict.ok, (delay, verdict, before)
    assert verify(path).entries > 5


def test_fedhem_audit_verify_on_a_site_config(tmp_path, capsys):
    df = pd.DataFrame({"age": [60.0 + i for i in range(20)], "x": range(20)})
    site, federation = site_files(tmp_path, df)
    with fh.Federation.from_config(federation) as fed:
        fed.describe("aml", ["age"])
        with pytest.raises(fh.FedHemError):
            fed.describe("aml", ["no_such_column"])
    assert main(["audit", "verify", "--config", str(site)]) == 0
    assert "ok:" in capsys.readouterr().out
    log = tmp_path / "audit" / "site_a.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) >= 3
    entry = json.loads(lines[1])
    entry["outcome"] = "something else"
    rewrite(log, [lines[0], json.dumps(entry), *lines[2:]])
    assert main(["audit", "verify", "--config", str(site)]) == 1
    assert "line 2: the entry was altered" in capsys.readouterr().out
    (tmp_path / "bare.toml").write_text('[site]\nname = "b"\n[datasets.aml]\npath = "aml.csv"\n')
    assert main(["audit", "verify", "--config", str(tmp_path / "bare.toml")]) == 2


def test_a_site_host_killed_during_queries_restarts_with_a_verifiable_log(tmp_path):
    """Sites in their own process (``isolation="process"``), a loop of queries, the process
    SIGKILLed at a random point: the queries in flight fail with a clear error (never a number),
    and after a restart the audit chain verifies and queries succeed, with the same ledger."""
    import threading

    rng = __import__("numpy").random.default_rng(7)
    df = pd.DataFrame({"age": rng.normal(60, 10, 200).round(1), "sex": rng.choice(["F", "M"], 200)})
    site, federation = site_files(tmp_path, df, extra='state_dir = "state"\n')
    for delay in (0.2, 0.5):
        fed = fh.Federation.from_config(federation, isolation="process")
        process = fed.coordinator.grid.transport._process
        errors: list[BaseException] = []
        done = threading.Event()

        def loop(fed=fed, errors=errors, done=done) -> None:
            for i in range(500):  # bounded: the kill ends it long before
                if done.is_set():
                    return
                try:
                    fed.describe("aml", ["age"], where=f"age > {30 + i % 20}")
                except Exception as exc:  # noqa: BLE001 - what the kill makes of a query
                    errors.append(exc)
                    return

        worker = threading.Thread(target=loop)
        worker.start()
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        worker.join(timeout=60)
        done.set()
        assert not worker.is_alive()
        assert errors and isinstance(errors[0], fh.FedHemError)  # a clear error, no number
        fed.close()
        assert main(["audit", "verify", "--config", str(site)]) == 0
        with fh.Federation.from_config(federation, isolation="process") as again:
            res = again.describe("aml", ["age"], where="age > 40")
            assert res.privacy.released_sites == ["site_a"]
        assert main(["audit", "verify", "--config", str(site)]) == 0


def test_a_long_log_is_continued_from_its_end(tmp_path):
    """The site reads only the end of its log when it starts (a log grows for years): past 64
    KiB, with a last entry longer than that and a torn line after it, the chain goes on."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(100):
        log.append(query=f"q{i}", outcome="released", filler="x" * 1000)
    log.append(query="long", outcome="released", detail=["y" * 200_000])
    with open(path, "a") as fh:
        fh.write('{"when": "2026-12-08", "query": "torn')
    AuditLog(path).append(query="after", outcome="released")
    verdict = verify(path)
    assert verdict.ok and verdict.entries == 102
