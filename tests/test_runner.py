"""`fedhem run NOTEBOOK --param name=value` and `fedhem demo`: headless, reproducible runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import fedhem_kernel as fh
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.runner import INJECTED_TAG, inject_parameters, parse_param

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_aml_survival.ipynb"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> str:
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(
        [sys.executable, "-m", "fedhem_kernel", "install", "--prefix", str(prefix)], check=True
    )
    return str(prefix / "share" / "jupyter")


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory) -> Path:
    from fedhem_kernel.demo.files import write_demo_federation

    return write_demo_federation(tmp_path_factory.mktemp("fed") / "demo")


def fedhem(*args: str, jupyter_path: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUPYTER_PATH": jupyter_path, "MPLBACKEND": "Agg"}
    env.pop("FEDHEM_FEDERATION", None)
    return subprocess.run(
        [sys.executable, "-m", "fedhem_kernel", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=5", ("n", 5)),
        ("alpha=0.05", ("alpha", 0.05)),
        ("flag=True", ("flag", True)),
        ("groups=['a', 'b']", ("groups", ["a", "b"])),
        ("dataset=aml", ("dataset", "aml")),
        ("where=age >= 60", ("where", "age >= 60")),
        ("name='quoted'", ("name", "quoted")),
        ("empty=", ("empty", "")),
    ],
)
def test_parse_param(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=5", "2x=1", "a b=1"])
def test_parse_param_rejects_bad_names(text):
    with pytest.raises(ParameterError):
        parse_param(text)


def test_injected_cell_goes_after_the_parameters_cell_and_replaces_an_old_one():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert inject_parameters(nb, {"group": "sex", "extra": 1}) == ["extra"]
    assert inject_parameters(nb, {"group": "sex"}) == []  # a second run replaces the cell
    injected = [i for i, c in enumerate(nb.cells) if INJECTED_TAG in c.metadata.get("tags", [])]
    assert injected == [index + 1]
    assert "group = 'sex'" in nb.cells[index + 1].source


def test_run_with_a_parameter_against_a_config(tmp_path, jupyter_path, demo_config):
    out = tmp_path / "out" / "by_sex.ipynb"
    done = fedhem(
        "run",
        str(NOTEBOOK),
        "--param",
        "group=sex",
        "--federation",
        str(demo_config),
        "-o",
        str(out),
        jupyter_path=jupyter_path,
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    nb = nbformat.read(out, as_version=4)
    meta = nb.metadata["fedhem"]
    assert meta["parameters"] == {"group": "sex"}
    assert meta["federation"] == str(demo_config.resolve())
    assert meta["status"] == "completed"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    medians = next(
        c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "km.median_survival"
    )
    text = medians.outputs[0]["data"]["text/plain"]
    assert "F" in text and "M" in text and "adverse" not in text  # grouped by sex, not ELN risk
    # the source notebook is untouched (no outputs)
    source = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code")
    # the queries ran at the config's sites, which audited them
    audit = demo_config.parent / "sites" / "charite" / "audit.jsonl"
    assert "km_grid" in audit.read_text()


def test_a_failing_cell_still_writes_the_executed_copy(tmp_path, jupyter_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "fedhem", "display_name": "FedHem", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("fed.combat('aml', ['age', 'wbc'], where='age > 200')"),
        nbformat.v4.new_code_cell("print('not reached')"),
    ]
    src = tmp_path / "fails.ipynb"
    nbformat.write(nb, src)
    done = fedhem("run", str(src), "-p", "n=2", "-f", "demo", jupyter_path=jupyter_path)
    assert done.returncode == 1
    assert "DisclosureError" in done.stderr
    out = tmp_path / "fails.executed.ipynb"
    executed = nbformat.read(out, as_version=4)
    assert executed.metadata["fedhem"]["status"] == "failed"
    assert executed.cells[1].source == "# Parameters (injected by fedhem run)\nn = 2\n"
    assert any(o.output_type == "error" for o in executed.cells[2].outputs)
    assert not executed.cells[3].outputs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file


def test_bad_inputs_fail_before_a_kernel_starts(tmp_path, jupyter_path):
    missing = fedhem("run", str(tmp_path / "nope.ipynb"), jupyter_path=jupyter_path)
    assert missing.returncode == 2 and "notebook not found" in missing.stderr
    bad_config = tmp_path / "federation.toml"
    bad_config.write_text("[sites]\n")
    out = tmp_path / "x.ipynb"
    done = fedhem(
        "run", str(NOTEBOOK), "-f", str(bad_config), "-o", str(out), jupyter_path=jupyter_path
    )
    assert done.returncode == 2 and "federation config" in done.stderr
    assert not out.exists()
    same = fedhem("run", str(NOTEBOOK), "-o", str(NOTEBOOK), jupyter_path=jupyter_path)
    assert same.returncode == 2 and "overwrite" in same.stderr
    param = fedhem("run", str(NOTEBOOK), "-p", "1bad=2", jupyter_path=jupyter_path)
    assert param.returncode == 2 and "identifier" in param.stderr


def test_demo_on_disk_gives_the_same_answers_as_the_embedded_demo(demo_config):
    with fh.Federation.from_config(demo_config) as on_disk, fh.Federation.demo() as embedded:
        assert list(on_disk.sites["site"]) == list(embedded.sites["site"])
        a = on_disk.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
        b = embedded.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
        assert a.survival_function.equals(b.survival_function)
        x = on_disk.crosstab("mm", "iss", "site")
        y = embedded.crosstab("mm", "iss", "site")
        assert x.table.equals(y.table)


def test_demo_command_replaces_only_a_demo_folder(tmp_path, jupyter_path):
    target = tmp_path / "demo"
    for _ in range(2):  # idempotent
        done = fedhem("demo", "--dir", str(target), jupyter_path=jupyter_path)
        assert done.returncode == 0, done.stderr
        assert "4/4 sites answer" in done.stdout
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    done = fedhem("demo", "--dir", str(other), jupyter_path=jupyter_path)
    assert done.returncode == 1 and "not a FedHem demo federation" in done.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "precious"]  # no staging left
