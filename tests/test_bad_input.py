"""Bad input gets a clear error naming site, dataset and column, never a value; the audit log has it."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from sites import site_audit, sites_of

import fedhem_kernel as fh

# values distinctive enough that finding them in a message can only mean a leak
SECRET_AGES = [41.734519, 77.218834]
SECRET_TEXT = "MRN-55521"


def cohort(seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.normal(60, 10, n).round(1),
            "risk": rng.choice(["low", "high"], n),
            "time": rng.exponential(20, n).round(2) + 0.1,
            "event": rng.integers(0, 2, n),
        }
    )
    df.loc[:1, "age"] = SECRET_AGES
    return df


@pytest.fixture
def fed(tmp_path):
    tables = {"a": {"aml": cohort(1)}, "b": {"aml": cohort(2)}}
    with fh.Federation.local(tables, audit_dir=tmp_path) as f:
        yield f


def assert_clean(message: str) -> None:
    for value in [*SECRET_AGES, SECRET_TEXT]:
        assert str(value) not in message


def test_unknown_dataset(fed):
    with pytest.raises(fh.SchemaError) as info:
        fed.describe("nope")
    assert info.value.dataset == "nope"


def test_unknown_column_names_site_dataset_and_column(fed):
    with pytest.raises(fh.SchemaError) as info:
        fed.kaplan_meier("aml", "time", "evnt")
    err = info.value
    assert (err.site, err.dataset, err.column) == ("a", "aml", "evnt")
    assert "site 'a'" in str(err) and "column 'evnt'" in str(err)
    log = fed.audit_log()
    assert {"a", "b"} <= set(log.loc[log["outcome"] == "error", "site"])


def test_malformed_where_is_refused_before_and_at_the_site(fed):
    with pytest.raises(fh.FilterError) as info:
        fed.describe("aml", where="age >= ")
    assert info.value.dataset == "aml"
    with pytest.raises(fh.FilterError) as info:
        fed.describe("aml", where="__import__('os').system('true')")
    with pytest.raises(fh.FilterError) as info:
        fed.describe("aml", where="agee > 3")
    assert info.value.column == "agee" and info.value.site == "a"
    with pytest.raises(fh.FilterError):
        fed.describe("aml", where="risk > 3")


def test_negative_and_missing_times(tmp_path):
    bad = cohort(3)
    bad.loc[5, "time"] = -2.0
    missing = cohort(4)
    missing.loc[7, "time"] = np.nan
    with fh.Federation.local({"a": {"aml": bad}, "b": {"aml": missing}}, audit_dir=tmp_path) as f:
        with pytest.raises(fh.SchemaError) as info:
            f.kaplan_meier("aml", "time", "event")
        log = f.audit_log()
    err = info.value
    assert err.column == "time" and err.dataset == "aml"
    assert "negative" in str(err) or "missing" in str(err)
    errors = log[log["outcome"] == "error"]
    details = " ".join(str(d) for d in errors["detail"])
    assert "negative survival times" in details and "missing survival times" in details
    # the audit files on disk have the same entries
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert any(json.loads(x)["outcome"] == "error" for x in lines)


def test_event_column_must_be_binary(fed):
    with pytest.raises(fh.SchemaError, match="0/1"):
        fed.kaplan_meier("aml", "time", "age")


def test_text_in_a_numeric_column_from_config(tmp_path):
    df = cohort(5)
    df["age"] = df["age"].astype(object)
    df.loc[3, "age"] = SECRET_TEXT
    df.to_csv(tmp_path / "aml.csv", index=False)
    (tmp_path / "site_a.toml").write_text(
        textwrap.dedent(
            """
            [site]
            name = "site_a"
            audit_log = "audit/site_a.jsonl"
            [datasets.aml]
            path = "aml.csv"
            [datasets.aml.columns]
            age = "float"
            time = { type = "float", unit = "months" }
            """
        )
    )
    (tmp_path / "federation.toml").write_text('[sites.site_a]\nconfig = "site_a.toml"\n')
    with pytest.raises(fh.SchemaError) as info:
        fh.Federation.from_config(tmp_path / "federation.toml")
    err = info.value
    assert (err.site, err.dataset, err.column) == ("site_a", "aml", "age")
    assert "expected numbers" in str(err)
    assert_clean(str(err))
    audit = (tmp_path / "audit" / "site_a.jsonl").read_text()
    assert '"outcome": "error"' in audit and "age" in audit
    assert_clean(audit)


def test_declared_column_missing_from_file(tmp_path):
    with pytest.raises(fh.SchemaError) as info:
        fh.Federation.local({"a": {"aml": cohort(6)}}, columns={"aml": {"wbc": "float"}})
    assert info.value.column == "wbc"


def test_bad_policy_values_are_rejected():
    with pytest.raises(fh.ParameterError):
        fh.Policy(min_cell_count=0)
    with pytest.raises(fh.ParameterError):
        fh.Policy(time_resolution="fortnightly")
    with pytest.raises(fh.ParameterError):
        fh.Policy.from_dict({"min_cell_cout": 5})


def test_no_error_message_or_audit_entry_carries_a_value(fed):
    attempts = [
        lambda: fed.describe("aml", where="age >= 41.7 and age <= 41.8"),
        lambda: fed.describe("aml", columns=["risk"]),
        lambda: fed.kaplan_meier("aml", "age", "event"),
        lambda: fed.kaplan_meier("aml", "time", "event", where="age == 77.2"),
        lambda: fed.crosstab("aml", "age", "risk"),
        lambda: fed.logrank("aml", "time", "event", "age"),
    ]
    messages = []
    for attempt in attempts:
        try:
            result = attempt()
        except fh.FedHemError as exc:
            messages.append(str(exc))
        else:
            messages.append(repr(result.privacy.to_frame().to_dict()))
    assert len(messages) == len(attempts)
    for m in messages:
        # the researcher's own filter text may echo what they typed; data values must not appear
        assert "41.734519" not in m
    log = site_audit(fed)
    text = log.to_string()
    for value in SECRET_AGES:
        assert str(value) not in text


def test_internal_errors_are_sanitised(fed, monkeypatch):
    def boom(data, params):
        raise ValueError(f"cannot convert {SECRET_AGES[0]}")  # a library error quoting a value

    for executor in sites_of(fed).values():
        step = executor.steps["describe_risk"]  # the first round of a pooled describe
        monkeypatch.setitem(
            executor.steps,
            "describe_risk",
            type(step)(step.name, step.analysis, boom, step.columns, step.params, step.sums),
        )
    with pytest.raises(fh.FedHemError) as info:
        fed.describe("aml", columns=["age"])
    assert "internal error" in str(info.value)
    assert_clean(str(info.value))
    assert_clean(site_audit(fed).to_string())
    assert_clean(fed.audit_log().to_string())


def test_a_filtered_dataframe_keeps_every_row():
    # A frame cut from a bigger one keeps its index labels (e.g. 3, 7, 12, ...); loading must not
    # align on them (that once turned two thirds of the rows into missing values).
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.normal(60, 10, 300), "t": rng.exponential(10, 300) + 0.1})
    df["e"] = (rng.random(300) < 0.7).astype(int)
    part = df[df.index % 3 != 0]
    fed = fh.Federation.local({"a": {"d": part}, "b": {"d": df}}, policy=fh.Policy.unrestricted())
    table = fed.describe("d", ["age"]).table
    assert int(table.loc["age", "count"]) == len(part) + len(df)
    fed.close()
