"""Every notebook in notebooks/ runs top to bottom on the fedhem kernel (nbclient)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(
        [sys.executable, "-m", "fedhem_kernel", "install", "--prefix", str(prefix)], check=True
    )
    ksm = KernelSpecManager()
    ksm.kernel_dirs.insert(0, str(prefix / "share" / "jupyter" / "kernels"))
    return ksm


def test_notebooks_are_stored_without_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_the_fedhem_kernel(path, kernel_specs, monkeypatch):
    monkeypatch.setenv("FEDHEM_FEDERATION", "demo")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "fedhem"
    # NotebookClient takes no KernelSpecManager: hand it a kernel manager that uses the kernelspec
    # installed into the temporary prefix (not whatever the environment has).
    km = AsyncKernelManager(kernel_name="fedhem", kernel_spec_manager=kernel_specs)
    assert Path(km.kernel_spec.resource_dir).is_relative_to(Path(kernel_specs.kernel_dirs[0]))
    client = NotebookClient(
        nb,
        km=km,
        kernel_name="fedhem",
        timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    finally:  # a manager we made is ours to stop (NotebookClient only stops its own)
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "Privacy report" in html  # every result shows its privacy report
    assert "data:image/png;base64" in html  # the KM plot rendered
    assert os.environ.get("FEDHEM_FEDERATION") == "demo"
