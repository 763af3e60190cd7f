"""The activity file the kernel writes and the sidebar reads."""

from __future__ import annotations

import json

import pytest

import fedhem_kernel as fh
from fedhem_kernel import activity as act
from fedhem_kernel.activity import ActivityLog, default_activity_path


def test_off_records_nothing(monkeypatch):
    monkeypatch.setenv("FEDHEM_ACTIVITY", "off")
    assert default_activity_path() is None
    assert ActivityLog.default().read() == []


def test_default_path_is_in_the_jupyter_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDHEM_ACTIVITY")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    assert default_activity_path() == tmp_path / "fedhem" / "activity.jsonl"


def test_entries_hold_outcomes_not_values(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    fed = fh.Federation.demo(user="dr_a")
    fed.activity = ActivityLog(path)
    result = fed.crosstab("aml", "eln_risk", "site")
    with pytest.raises(fh.SchemaError):
        fed.describe("aml", ["no_such_column"])
    entries = ActivityLog(path).read(user="dr_a")
    assert [e["analysis"] for e in entries] == ["describe", "crosstab"]
    bad, ok = entries
    assert bad["outcome"] == "error" and "no_such_column" in bad["message"]
    assert ok["outcome"] == act.overall_outcome(result.privacy)
    # no released number is in the file: only names, statuses and rules
    text = path.read_text()
    for value in result.table.to_numpy().ravel():
        if value == value and value >= 10:  # skip NA and small digits that appear in timestamps
            assert f": {int(value)}" not in text and f"[{int(value)}" not in text


def test_newest_first_limit_and_torn_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    log = ActivityLog(path)
    for i in range(5):
        log.record(query_id=str(i), user="u", analysis="describe", dataset="aml", where=None)
    with open(path, "a") as fh_:
        fh_.write('{"query_id": "half-writ')  # another process mid-append
    assert [e["query_id"] for e in log.read(limit=3)] == ["4", "3", "2"]
    assert log.read(user="someone") == []


def test_the_file_is_kept_small(tmp_path, monkeypatch):
    monkeypatch.setattr(act, "_KEEP_BYTES", 2000)
    path = tmp_path / "a.jsonl"
    log = ActivityLog(path)
    for i in range(60):
        log.record(query_id=str(i), user="u", analysis="describe", dataset="aml", where=None)
    assert path.stat().st_size <= 2000 + 400
    ids = [json.loads(line)["query_id"] for line in path.read_text().splitlines()]
    assert ids[-1] == "59" and ids == sorted(ids, key=int)


def test_an_unwritable_file_never_fails_a_query(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fed = fh.Federation.demo()
    fed.activity = ActivityLog(blocker / "activity.jsonl")  # parent is a file: cannot write
    assert fed.describe("aml", ["age"]).table is not None
