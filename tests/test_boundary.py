"""The trust boundary in the code: import rules, a researcher's side that holds no rows, and an
analysis added as one package plus one registry line."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from import_rules import side, violations
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.analyses import registry
from fedhem_kernel.site.datasets import Dataset
from fedhem_kernel.site.executor import SiteExecutor
from fedhem_kernel.site.host import AppHost
from fedhem_kernel.site.steps import SiteData

PACKAGE = Path(fh.__file__).parent


# -- import rules ---------------------------------------------------------------------------------
def test_every_import_follows_the_boundary_rules():
    assert violations(PACKAGE) == []


def test_sides_are_read_from_paths():
    assert side("fedhem_kernel.analyses.cox.site_design") == "site"
    assert side("fedhem_kernel.analyses.cox.combine_checks") == "researcher"
    assert side("fedhem_kernel.analyses.cox.result") == "researcher"
    assert side("fedhem_kernel.analyses.cox") == "shared"
    assert side("fedhem_kernel.site.executor") == "site"
    assert side("fedhem_kernel.engine.local_grid") == "researcher"
    assert side("fedhem_kernel.protocol.codec") == "shared"


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        (
            "site/executor.py",
            "from fedhem_kernel.engine import coordinator",
            "site code imports researcher",
        ),
        ("site/filters.py", "import fedhem_kernel.display.state", "site code imports researcher"),
        (
            "analyses/kmeans/site.py",
            "from fedhem_kernel.federation import Federation",
            "site code imports researcher",
        ),
        (
            "analyses/cox/site_checks.py",
            "from fedhem_kernel.analyses.cox.combine_sums import CoxFit",
            "site code imports researcher",
        ),
        (
            "analyses/describe/combine.py",
            "from fedhem_kernel.analyses.describe.site import site_describe",
            "researcher code imports site",
        ),
        (
            "analyses/pca/result.py",
            "from fedhem_kernel.site.steps import SiteData",
            "researcher code imports site",
        ),
        (
            "site/audit.py",
            "from fedhem_kernel.analyses import registry",
            "site/ imports an analysis",
        ),
        (
            "engine/coordinator.py",
            "from fedhem_kernel.site import executor",
            "engine/ imports site/ or analyses/",
        ),
        (
            "engine/local_grid.py",
            "from fedhem_kernel.analyses.kmeans import COLUMN",
            "engine/ imports site/ or analyses/",
        ),
        (
            "protocol/codec.py",
            "from fedhem_kernel.site.schema import DatasetSchema",
            "shared code imports site",
        ),
    ],
)
def test_a_violating_import_is_caught(tmp_path, module, line, rule):
    copy = tmp_path / "fedhem_kernel"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "labextension"))
    target = copy / module
    # inside a function, where a lazy import would hide from a check of top-level imports only
    target.write_text(target.read_text() + f"\n\ndef _violation():\n    {line}\n")
    found = violations(copy)
    assert len(found) == 1 and rule in found[0] and module in found[0], found


def test_no_result_module_imports_the_display_when_imported():
    results = sorted(
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        for p in PACKAGE.glob("analyses/**/result*.py")
    )
    assert len(results) >= 10
    code = (
        f"import json, sys, importlib; [importlib.import_module(m) for m in {results!r}]; "
        "print(json.dumps([m for m in sys.modules if m.startswith('fedhem_kernel.display')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_importing_the_coordinator_imports_no_site_step():
    code = (
        "import json, sys; import fedhem_kernel.engine.coordinator; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fedhem_kernel'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "fedhem_kernel.engine.coordinator" in loaded
    assert not [m for m in loaded if side(m) == "site" or m.startswith("fedhem_kernel.analyses")]


# -- the researcher's side holds no rows -------------------------------------------------------------
ROWS = (SiteExecutor, Dataset, SiteData, AppHost, pd.DataFrame, pd.Series)


def reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through its state: attributes, containers, closures,
    bound methods, default arguments. Code is not state: modules, classes and a function's globals
    are not followed (they reach everything in the process)."""
    seen: set[int] = set()
    out = []
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, types.ModuleType | type | types.CodeType):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, types.FunctionType):
            cells = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
            stack += [*cells, obj.__defaults__, obj.__kwdefaults__, obj.__dict__]
        elif isinstance(obj, types.MethodType):
            stack += [obj.__self__, obj.__func__]
        else:
            stack += gc.get_referents(obj)
    return out


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def rows_reachable(root: object) -> list[str]:
    return [type(o).__name__ for o in reachable(root) if isinstance(o, ROWS)]


MONTHS = {"d": {"time": {"type": "float", "unit": "months"}}}


def cohort(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(60, 10, n).round(1),
            "time": rng.exponential(20, n).round(1) + 0.1,
            "event": rng.integers(0, 2, n),
            "risk": rng.choice(["low", "high"], n),
        }
    )


def test_nothing_reachable_from_a_federation_holds_rows():
    tables = {"a": {"d": cohort(300, 1)}, "b": {"d": cohort(200, 2)}}
    with fh.Federation.local(tables, columns=MONTHS) as fed:
        fed.describe("d", ["age"], by="risk")
        fed.kaplan_meier("d", "time", "event", group="risk")
        fed.cox("d", "time", "event", ["age", "risk"])
        fed.kmeans("d", ["age", "time"], k=2)  # leaves a derived column at the sites
        fed.audit_log()
        assert rows_reachable(fed) == []
        walked = {type(o).__name__ for o in reachable(fed)}
        assert {"Coordinator", "LocalGrid", "InProcess", "ThreadPoolExecutor"} <= walked
        # the walk would see a site if one were reachable: hold one and it is found
        fed._leak = sites_of(fed)["a"]  # type: ignore[attr-defined]
        assert {"SiteExecutor", "Dataset", "DataFrame"} <= set(rows_reachable(fed))


def test_the_demo_federation_holds_no_rows_either():
    with fh.Federation.demo() as fed:
        fed.crosstab("aml", "eln_risk", "sex")
        assert rows_reachable(fed) == []


# -- an analysis is one package and one registry line ----------------------------------------------
TOY = {
    "__init__.py": '''
        """A federated count: how many patients each site has in the cohort, pooled."""
    ''',
    "site.py": """
        from fedhem_kernel.site.steps import SiteStep

        def site_count(data, params):
            n = len(data.cohort)
            if 0 < n < data.k:
                raise data.refuse("min_cell_count", f"fewer than {data.k} patients")
            return {"n": n}

        STEPS = [SiteStep("toy_count", "toycount", site_count, lambda params: [])]
    """,
    "combine.py": """
        from toycount.result import CountResult

        def run(q, minimum=0):
            payloads = q.ask("toy_count", {})
            return CountResult(sum(p["n"] for p in payloads.values()), q.report())
    """,
    "result.py": """
        from dataclasses import dataclass

        from fedhem_kernel.analyses.common.result_base import Result

        @dataclass(frozen=True, repr=False)
        class CountResult(Result):
            n: int
            privacy: object
    """,
}


def test_a_new_analysis_is_one_package_and_one_registry_line(tmp_path, monkeypatch):
    package = tmp_path / "toycount"
    package.mkdir()
    for name, text in TOY.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ANALYSES, "toycount", "toycount")  # the registry line

    tables = {"a": {"d": cohort(30, 3)}, "b": {"d": cohort(20, 4)}, "c": {"d": cohort(3, 5)}}
    with fh.Federation.local(tables, columns=MONTHS) as fed:
        res = fed.run("toycount", "d")
        assert res.n == 50  # site c (3 patients) refused under the default policy
        assert res.privacy.outcome("c").status == "refused"
        assert res.privacy.outcome("a").status == "released"
        assert fed.run("toycount", "d", where="age > 0").n == 50
        # it went through each site's ClientApp and the grid: the sites audited the step
        log = fed.audit_log()
        assert set(log.loc[log["analysis"] == "toy_count", "site"]) == {"a", "b", "c"}
        assert all(n > 0 for n in fed.coordinator.grid.replies_received.values())
        # and it displays with no display code of its own: the generic renderers
        html = res._repr_html_()
        assert "toycount on &#x27;d&#x27;" in html and "50" in html and "Privacy report" in html
        assert "CountResult(" in repr(res) and res.to_frame().loc["n", "value"] == 50
        assert res.widget().title == "toycount on 'd'"
    # the policy knows the analysis by its registry name
    only = fh.Policy(allowed_analyses=("toycount",))
    with fh.Federation.local({"a": {"d": cohort(30, 3)}}, policy=only) as fed:
        assert fed.run("toycount", "d").n == 30
        with pytest.raises(fh.DisclosureError, match="allowed_analyses"):
            fed.describe("d", ["age"])
    with pytest.raises(fh.ParameterError, match="unknown analysis"):
        fh.Federation.local({"a": {"d": cohort(30, 3)}}).run("nope", "d")


def test_every_site_step_declares_the_parameters_its_request_may_carry():
    from fedhem_kernel import node

    steps = node.site_steps()
    assert len(steps) >= 25
    undeclared = sorted(name for name, step in steps.items() if step.params is None)
    assert undeclared == []
    for name in registry.names():  # and every analysis its arguments
        package = __import__(registry.package(name), fromlist=["PARAMS"])
        assert isinstance(getattr(package, "PARAMS", None), dict), name
