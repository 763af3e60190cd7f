"""The workshop (notebooks/workshop) and the welcome tour: solutions pass, exercises give hints.

Beyond tests/test_notebooks.py (every notebook runs and is stored clean) this checks that

* every exercise has a check cell in both notebooks, with the same ids, and a runnable placeholder
  in the exercise notebook;
* the solution notebook, executed on the fedhem kernel, prints "✓" for every exercise (strict mode:
  a wrong solution would raise AssertionError);
* the exercise notebook runs as delivered and prints a hint, never a "✓", for every exercise;
* the checker module, used in-process with ``fh.Federation.demo()``, accepts right answers and
  rejects wrong ones (a hint in exercise mode, AssertionError in strict mode) without giving the
  expected value away;
* the welcome tour shows a suppression, and a rare selection counted without a refusal.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

import fedhem_kernel as fh

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = ROOT / "notebooks" / "workshop"
EXERCISES = WORKSHOP / "exercises.ipynb"
SOLUTIONS = WORKSHOP / "solutions.ipynb"
WELCOME = ROOT / "notebooks" / "00_welcome.ipynb"
CHECK_CELL = re.compile(r"^check\.(ex\d+)\((answer\d+)\)$")
PASS = "✓"


# -- helpers ------------------------------------------------------------------------------------
def load_check() -> ModuleType:
    """A fresh copy of notebooks/workshop/check.py (its own STRICT flag and federation)."""
    spec = importlib.util.spec_from_file_location("workshop_check", WORKSHOP / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """(cell index, exercise id, answer variable) of every check cell."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            m = CHECK_CELL.match(cell.source.strip())
            if m:
                out.append((i, m.group(1), m.group(2)))
    return out


def text_of(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def errors_in(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"{o.ename}: {o.evalue}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(
        [sys.executable, "-m", "fedhem_kernel", "install", "--prefix", str(prefix)], check=True
    )
    ksm = KernelSpecManager()
    ksm.kernel_dirs.insert(0, str(prefix / "share" / "jupyter" / "kernels"))
    return ksm


def prefix_of(ksm: KernelSpecManager) -> Path:
    """The temporary kernels directory the fixture put first."""
    return Path(ksm.kernel_dirs[0])


@pytest.fixture
def execute(
    kernel_specs: KernelSpecManager, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Path], nbformat.NotebookNode]:
    monkeypatch.setenv("FEDHEM_FEDERATION", "demo")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    def run(path: Path) -> nbformat.NotebookNode:
        nb = nbformat.read(path, as_version=4)
        # NotebookClient has no option for a KernelSpecManager: hand it a kernel manager that uses
        # the kernelspec installed into the temporary prefix (not whatever the environment has).
        km = AsyncKernelManager(kernel_name="fedhem", kernel_spec_manager=kernel_specs)
        assert Path(km.kernel_spec.resource_dir).is_relative_to(prefix_of(kernel_specs))
        try:
            NotebookClient(
                nb,
                km=km,
                timeout=120,
                allow_errors=True,  # collect every error, then assert on them
                resources={"metadata": {"path": str(path.parent)}},
            ).execute()
        finally:  # a manager we made is ours to stop (NotebookClient only stops its own)
            if run_sync(km.is_alive)():
                run_sync(km.shutdown_kernel)(now=True)
        return nb

    return run


# -- structure ----------------------------------------------------------------------------------
def test_every_exercise_has_a_check_cell_and_a_solution():
    check = load_check()
    exercises = nbformat.read(EXERCISES, as_version=4)
    solutions = nbformat.read(SOLUTIONS, as_version=4)
    ex_cells, sol_cells = check_cells(exercises), check_cells(solutions)
    ex_ids = [i for _, i, _ in ex_cells]
    sol_ids = [i for _, i, _ in sol_cells]
    assert ex_ids == sol_ids == list(check.EXERCISES)  # same ids, each once, in order
    for ex_id in check.EXERCISES:
        assert callable(getattr(check, ex_id)), ex_id
    for index, ex_id, var in ex_cells:
        n = ex_id.removeprefix("ex")
        assert var == f"answer{n}"
        # the answer cell just before the check cell holds the runnable placeholder
        placeholder = exercises.cells[index - 1]
        assert placeholder.cell_type == "code"
        assert re.match(rf"^{var} = None\s+# your code", placeholder.source), ex_id
    for index, ex_id, var in sol_cells:
        answer = solutions.cells[index - 1].source
        assert f"{var} = " in answer and f"{var} = None  # your code" not in answer, ex_id
    for nb in (exercises, solutions):
        assert nb.metadata["kernelspec"] == {
            "display_name": "FedHem (federated Python)",
            "language": "python",
            "name": "fedhem",
        }
        assert nb.cells[0].cell_type == "markdown" and "`fed`" in nb.cells[0].source
    first_code = [c for c in solutions.cells if c.cell_type == "code"][0].source
    assert "check.STRICT = True" in first_code
    first_code = [c for c in exercises.cells if c.cell_type == "code"][0].source
    assert "STRICT" not in first_code


def test_readme_timetable_lists_six_blocks_and_every_exercise():
    readme = (WORKSHOP / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^\| \d:\d\d–\d:\d\d \| (\d) ·", readme, flags=re.M)
    assert blocks == ["1", "2", "3", "4", "5", "6"]
    last_column = re.findall(r"^\| \d:\d\d.*\| ([\d, —]+) \|$", readme, flags=re.M)
    listed = {int(n) for cell in last_column for n in re.findall(r"\d+", cell)}
    assert listed == set(range(1, len(load_check().EXERCISES) + 1))


# -- executed on the fedhem kernel --------------------------------------------------------------
@pytest.mark.notebook
def test_solutions_pass_every_check(execute):
    nb = execute(SOLUTIONS)
    assert errors_in(nb) == []
    cells = check_cells(nb)
    assert cells
    for index, ex_id, _ in cells:
        printed = text_of(nb.cells[index])
        n = ex_id.removeprefix("ex")
        assert f"{PASS} correct (exercise {n})" in printed, (ex_id, printed)
        assert "Hint" not in printed


@pytest.mark.notebook
def test_exercises_run_and_give_hints(execute):
    nb = execute(EXERCISES)
    assert errors_in(nb) == []
    everything = "".join(
        text_of(c) + "".join(str(o.get("data", {})) for o in c.outputs)
        for c in nb.cells
        if c.cell_type == "code"
    )
    assert PASS not in everything  # nothing is answered yet
    for index, ex_id, _ in check_cells(nb):
        printed = text_of(nb.cells[index])
        n = ex_id.removeprefix("ex")
        assert printed.startswith(f"Exercise {n}: no answer yet"), (ex_id, printed)
        assert "Hint:" in printed


@pytest.mark.notebook
def test_welcome_tour_shows_suppression_and_rare_selections(execute):
    nb = execute(WELCOME)
    assert errors_in(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    streams = "".join(text_of(c) for c in code)
    # the pooled crosstab hides cells (NA), and its notes say why
    table = next(c for c in code if "fed.crosstab" in c.source)
    table_html = "".join(o.get("data", {}).get("text/html", "") for o in table.outputs)
    assert "&lt;NA&gt;" in table_html or ">NA<" in table_html or "<NA>" in table_html
    assert "secure sums: every count shown is within 2" in streams
    # a rare selection: the hospitals with fewer than 5 add none of them, and none refuses
    rare = next(c for c in code if 'where="wbc > 200"' in c.source)
    rare_html = "".join(o.get("data", {}).get("text/html", "") for o in rare.outputs)
    assert ">released</span>" in rare_html and ">refused</span>" not in rare_html
    nobody = next(c for c in code if 'where="age < 25"' in c.source)
    nobody_html = "".join(o.get("data", {}).get("text/html", "") for o in nobody.outputs)
    assert "<td>0</td>" in nobody_html or ">0<" in nobody_html  # counts no one
    assert "Error" not in streams
    assert "describe_rules" in "".join(c.source for c in code)
    assert "Federation" in "".join(c.source for c in nb.cells if c.cell_type == "markdown")


# -- the checker module, in-process -------------------------------------------------------------
@pytest.fixture(scope="module")
def fed() -> Iterator[fh.Federation]:
    federation = fh.Federation.demo()
    yield federation
    federation.close()


@pytest.fixture
def check(fed: fh.Federation) -> ModuleType:
    module = load_check()
    module.use(fed)
    return module


def _km(fed: fh.Federation) -> Any:
    return fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")


def _right(fed: fh.Federation, ex: str) -> Any:
    """A right answer, computed here the way a participant would."""
    if ex == "ex1":
        cat = fed.catalog("mm")
        return list(cat.loc[cat["unit"].notna(), "column"].unique())
    if ex == "ex2":
        return fed.policies["policlinico_bari"].min_cell_count
    if ex == "ex3":
        table = fed.describe("aml", columns=["age"], by="eln_risk").table
        return table.xs("age", level="variable")["mean"]
    if ex == "ex4":
        table = fed.describe("aml", columns=["wbc"], by="eln_risk").table
        return int(table.loc[("adverse", "wbc"), "n_sites"])
    if ex == "ex5":
        return int(
            fed.crosstab("aml", "eln_risk", "treatment_intensity").table.loc[
                "favourable", "intensive"
            ]
        )
    if ex == "ex6":
        return int(fed.crosstab("aml", "eln_risk", "flt3_itd").table.loc["favourable", "1"])
    if ex == "ex7":
        return _km(fed).median_survival.to_dict()
    if ex == "ex8":
        return float(_km(fed).survival_function_at_times(24, group="favourable").iloc[0])
    if ex == "ex9":
        lr = fed.logrank("aml", "os_months", "os_status", group="treatment_intensity")
        return lr.test_statistic
    if ex == "ex10":
        table = fed.describe("aml", columns=["age"], where="wbc > 200").table
        return int(table.loc["age", "count"])
    raise AssertionError(ex)


def _wrong(fed: fh.Federation, ex: str) -> list[Any]:
    """Plausible mistakes for each exercise (all must be rejected)."""
    right = _right(fed, ex)
    if ex == "ex1":
        return [right[:1], [*right, "os_status"], "os_months", 42]
    if ex in ("ex2", "ex4", "ex5", "ex10"):
        return [right + 1, right - 1, str(right), float(right) + 0.5]
    if ex == "ex3":
        table = fed.describe("aml", columns=["age"], by="eln_risk").table
        medians = table.xs("age", level="variable")["50%"]  # the median, not the mean
        shifted = dict(right)
        shifted["favourable"] += 1.0
        missing = dict(right)
        missing.pop("adverse")
        return [medians, shifted, missing, list(right.values), float(right.mean())]
    if ex == "ex6":
        return [right + 1, right - 5, str(right), ["karolinska"], True]
    if ex == "ex7":
        overall = fed.kaplan_meier("aml", "os_months", "os_status").median_survival["all"]
        changed = {**right, "adverse": right["adverse"] + 1}
        return [changed, {g: overall for g in right}, list(right.values())]
    if ex == "ex8":
        km = _km(fed)
        adverse = float(km.survival_function_at_times(24, group="adverse").iloc[0])
        at_12 = float(km.survival_function_at_times(12, group="favourable").iloc[0])
        return [adverse, at_12, right * 100, right + 0.02]
    if ex == "ex9":
        lr = fed.logrank("aml", "os_months", "os_status", group="treatment_intensity")
        by_risk = fed.logrank("aml", "os_months", "os_status", group="eln_risk")
        return [lr.p_value, by_risk.test_statistic, right + 0.2, lr]
    raise AssertionError(ex)


SIMPLE = [f"ex{i}" for i in range(1, 11)]


@pytest.mark.parametrize("ex", SIMPLE)
def test_checker_accepts_the_right_answer(check, fed, ex, capsys):
    check.STRICT = True
    assert getattr(check, ex)(_right(fed, ex)) is True
    n = ex.removeprefix("ex")
    assert f"{PASS} correct (exercise {n})" in capsys.readouterr().out


@pytest.mark.parametrize("ex", SIMPLE)
def test_checker_rejects_wrong_answers(check, fed, ex, capsys):
    n = ex.removeprefix("ex")
    right = _right(fed, ex)
    for wrong in _wrong(fed, ex):
        check.STRICT = False
        assert getattr(check, ex)(wrong) is False, wrong
        printed = capsys.readouterr().out
        assert printed.startswith(f"Exercise {n}: not quite. Hint: ") and PASS not in printed
        if isinstance(right, int | float) and abs(right) >= 10 or isinstance(right, float):
            # the hint does not give the answer away (small whole numbers occur in any text)
            assert f"{right:g}" not in printed and str(right) not in printed
        check.STRICT = True
        with pytest.raises(AssertionError, match=f"Exercise {n}: not quite"):
            getattr(check, ex)(wrong)


@pytest.mark.parametrize("ex", [*SIMPLE, "ex11"])
def test_checker_asks_for_an_answer_when_there_is_none(check, ex, capsys):
    n = ex.removeprefix("ex")
    assert getattr(check, ex)(None) is False
    printed = capsys.readouterr().out
    assert printed.startswith(f"Exercise {n}: no answer yet") and "Hint:" in printed
    check.STRICT = True
    with pytest.raises(AssertionError, match="no answer yet"):
        getattr(check, ex)(None)


def test_checker_differencing_exercise(check, fed, capsys):
    check.STRICT = True
    fed.describe("aml", columns=["age"], where="age >= 70")
    second = fed.describe("aml", columns=["age"], where="age > 70")
    assert check.ex11(second) is True
    assert f"{PASS} correct (exercise 11)" in capsys.readouterr().out
    # another result, a table of other numbers, a rule name: not the answer
    other = fed.describe("aml", columns=["age"], where="age < 60")
    for wrong in (other, other.table, "differencing", 11):
        with pytest.raises(AssertionError, match="Exercise 11: not quite"):
            check.ex11(wrong)


def test_checker_needs_a_federation():
    check = load_check()
    with pytest.raises(RuntimeError, match="check.use"):
        check.ex2(5)  # no `fed` given and no IPython namespace to find one in
    with pytest.raises(RuntimeError, match="FEDHEM_FEDERATION"):
        check.use(None)
