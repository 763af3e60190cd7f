"""Figures in a result's HTML are drawn on their own ``Figure``: the user's matplotlib backend and
pyplot state are never touched (a lifelines user plots next to FedHem results)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from test_notebooks import kernel_specs  # noqa: F401 - the fixture: a kernelspec in a temp prefix

DISPLAYS = """
import fedhem_kernel as fh
fed = fh.Federation.demo()
km = fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
cox = fed.cox("aml", "os_months", "os_status", ["age", "npm1"])
ci = fed.cumulative_incidence("aml", "efs_months", "efs_cause", group="sex")
"""


@pytest.mark.slow
def test_html_figures_leave_the_backend_and_pyplot_alone():
    code = DISPLAYS + textwrap.dedent(
        """
        import matplotlib
        before = matplotlib.get_backend()
        for result in (km, cox, ci):
            assert "data:image/png;base64" in result._repr_html_()
            result._repr_mimebundle_()
        import matplotlib.pyplot as plt
        assert matplotlib.get_backend() == before == "svg", matplotlib.get_backend()
        assert plt.get_fignums() == []  # no pyplot figure was opened
        print("ok")
        """
    )
    env = {**os.environ, "MPLBACKEND": "svg"}  # a backend that is not Agg: a switch would show
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.notebook
def test_a_plain_plot_still_renders_inline_after_results_are_displayed(
    kernel_specs,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("FEDHEM_FEDERATION", "demo")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default: inline
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "fedhem", "display_name": "FedHem", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import matplotlib\nbefore = matplotlib.get_backend()\nbefore"),
        nbformat.v4.new_code_cell(DISPLAYS + "km"),
        nbformat.v4.new_code_cell("cox"),
        nbformat.v4.new_code_cell("ci"),
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\n"
            "assert matplotlib.get_backend() == before, matplotlib.get_backend()\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
        ),
    ]
    km = AsyncKernelManager(kernel_name="fedhem", kernel_spec_manager=kernel_specs)
    client = NotebookClient(
        nb,
        km=km,
        kernel_name="fedhem",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    backend = nb.cells[0].outputs[0]["data"]["text/plain"]
    assert "inline" in backend
    for cell in nb.cells[1:4]:  # every result displayed with its HTML figure
        html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
        assert "data:image/png;base64" in html
    plot = nb.cells[4].outputs
    assert not [o for o in plot if o.output_type == "error"], plot
    assert any("image/png" in o.get("data", {}) for o in plot)
