"""JupyterLab in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

Starts JupyterLab under a non-root base_url with the demo federation, opens notebook 01 on the fedhem
kernel, runs all cells, and checks what a researcher sees: the Kaplan–Meier widget, the privacy panel,
the "Federation" sidebar with the four demo sites, the catalog inserting a column name at the cursor,
and the query activity with outcome badges. Saves a screenshot to tests/output/browser/.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "tests" / "output" / "browser"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DEMO_SITES = ["karolinska", "charite", "hopital_st_louis", "policlinico_bari"]
BASE_URL = "/fedhem-browser-test/"


@pytest.fixture(autouse=True)
def jp_asyncio_loop():
    """Replace pytest-jupyter's per-test event loop here: Playwright's sync API runs its own."""
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup():
    """No in-process Jupyter server here (JupyterLab runs as a subprocess): nothing to clean."""
    yield


def ensure_chromium() -> Path:
    """Install Debian's chromium when missing (as CI does); fail, never skip, when that is impossible."""
    if CHROMIUM.exists():
        return CHROMIUM
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    sudo = [] if root else ["sudo", "-n"]  # as a user, only with password-less sudo
    can_sudo = root or (
        shutil.which("sudo") is not None
        and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )
    if can_sudo and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env=env,
            timeout=1200,
        )
    if not CHROMIUM.exists():
        pytest.fail(
            "the browser test needs Debian's chromium at /usr/bin/chromium: "
            "run `sudo apt-get install -y chromium` (make test does this when run as root)"
        )
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebooks/ under BASE_URL."""
    yield from run_lab(tmp_path_factory.mktemp("lab"), "demo")


def run_lab(tmp: Path, federation: str):
    """Start JupyterLab on ``federation`` (``FEDHEM_FEDERATION``); yield its url, token, folders."""
    work = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", work)
    prefix = tmp / "prefix"
    subprocess.run(
        [sys.executable, "-m", "fedhem_kernel", "install", "--prefix", str(prefix)], check=True
    )
    port, token = free_port(), secrets.token_hex(16)
    # no "get notified about Jupyter news?" toast over the screenshot (and no outbound fetch)
    labconfig = tmp / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )
    env = {
        **os.environ,
        "FEDHEM_FEDERATION": federation,
        "FEDHEM_ACTIVITY": str(tmp / "activity.jsonl"),
        "FEDHEM_USER": "browser_test",
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "MPLBACKEND": "Agg",
    }
    command = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.base_url={BASE_URL}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",
        "--MultiKernelManager.default_kernel_name=fedhem",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp / "lab.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}{BASE_URL}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                tail = (tmp / "lab.log").read_text()[-3000:]
                pytest.fail(f"JupyterLab did not start:\n{tail}")
            time.sleep(0.3)
    yield {"url": url, "token": token, "dir": work, "log": tmp / "lab.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        yield b
        b.close()


def test_notebook_runs_and_shows_the_km_widget_and_the_sidebar(lab, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{lab['url']}lab/tree/01_aml_survival.ipynb?token={lab['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=60_000)

    # --- the notebook is open on the fedhem kernel, idle
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                && w.sessionContext.session.kernel;
            return k && k.name === 'fedhem' && w.sessionContext.kernelDisplayStatus === 'idle';
        }""",
        timeout=90_000,
    )

    # --- the Federation sidebar lists the demo sites, online
    page.locator('.jp-SideBar [data-id="fedhem-sidebar"]').first.click()
    sidebar = page.locator("#fedhem-sidebar")
    sidebar.locator(".fedhem-title", has_text="Federation").wait_for(timeout=30_000)
    sidebar.locator(".fedhem-site").nth(len(DEMO_SITES) - 1).wait_for(timeout=30_000)
    names = sidebar.locator(".fedhem-site-name").all_inner_texts()
    assert names == DEMO_SITES
    assert sidebar.locator(".fedhem-status-online.fedhem-status-label").count() == len(DEMO_SITES)

    # --- run all cells
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        """() => {
            const nb = window.jupyterapp.shell.currentWidget.content;
            const cells = nb.widgets.filter(c => c.model.type === 'code');
            return cells.length > 0 && cells.every(c => c.model.executionCount !== null)
                && window.jupyterapp.shell.currentWidget.sessionContext
                     .kernelDisplayStatus === 'idle';
        }""",
        timeout=180_000,
    )
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, tracebacks[:1]

    # --- the KM widget rendered: curves, band, numbers at risk, privacy panel
    km = page.locator(".fedhem-km").first
    km.wait_for(timeout=60_000)
    km.scroll_into_view_if_needed()
    assert km.locator("svg path").count() >= 3  # one step curve per ELN risk group at least
    assert km.locator("svg").first.bounding_box()["width"] > 200
    # inner_text() is "" while JupyterLab lays out a cell scrolled into view: let Playwright retry
    expect(km).to_contain_text("at risk", ignore_case=True, timeout=30_000)
    assert page.locator(".fedhem-privacy").count() >= 1

    # --- the Cox widget draws its forest plot: one row per coefficient, reference line at HR 1
    forest = page.locator(".fedhem-forest").first
    forest.wait_for(timeout=60_000)
    rows = forest.locator(".fedhem-forest-row")
    assert rows.count() == 3  # age, eln_risk_favourable, eln_risk_intermediate
    assert "eln_risk_favourable" in rows.nth(1).text_content()
    assert forest.bounding_box()["width"] > 300
    # sites in secure sums: Harrell's C computed by the sites on sealed tables, and said so
    cox_text = page.locator(".fedhem-table", has=forest).first.text_content()
    assert "concordance (Harrell's C)" in cox_text and "not computed" not in cox_text
    assert "only C and its bounds were released" in cox_text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    forest.scroll_into_view_if_needed()
    forest.screenshot(path=str(SCREENSHOTS / "cox_forest.png"))
    page.locator(".fedhem-table", has=forest).first.screenshot(
        path=str(SCREENSHOTS / "cox_widget.png")
    )

    # --- the sidebar's activity lists the queries just run, with outcome badges
    page.locator("#fedhem-sidebar .fedhem-refresh").click()
    # the notebook's last query is refused on purpose: wait until the list has caught up with it
    page.wait_for_function(
        "() => document.querySelectorAll('#fedhem-sidebar .fedhem-badge-refused').length > 0",
        timeout=30_000,
    )
    items = sidebar.locator(".fedhem-activity-item")
    assert items.count() == 8  # describe x2, crosstab x2, KM, log-rank, Cox, the refused ComBat
    badges = [b.lower() for b in items.locator(".fedhem-badge").all_text_contents()]
    assert badges[0] == "refused"  # newest first
    assert set(badges) <= {"released", "suppressed", "refused", "error"}

    # --- screenshot: sidebar with sites + KM widget in view
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "lab_km_sidebar.png"
    km.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000

    # --- clicking a catalog column inserts its name at the cursor of the active cell
    page.evaluate(
        """async () => {
            const app = window.jupyterapp;
            await app.commands.execute('notebook:insert-cell-below');
            await app.commands.execute('notebook:enter-edit-mode');
        }"""
    )
    sidebar.locator("details.fedhem-dataset summary", has_text="aml").first.click()
    # what the data stewards declare shows next to each column (DP mode uses it)
    age = sidebar.locator('.fedhem-column[data-column="age"]').first
    assert "0\u2013100" in age.locator(".fedhem-column-declared").inner_text()
    sex = sidebar.locator('.fedhem-column[data-column="eln_risk"]').first
    assert sex.locator(".fedhem-column-declared").inner_text() == "3 levels"
    sidebar.screenshot(path=str(SCREENSHOTS / "sidebar_catalog_declared.png"))
    sidebar.locator(".fedhem-column", has_text="os_months").first.click()
    source = page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.source"
    )
    assert "os_months" in source
    assert not problems, problems[:3]
    page.close()


DP_SITES = ["north", "south", "east"]


def dp_federation(folder: Path) -> Path:
    """A federation file of three sites in DP mode that keep their state in ``folder``."""
    import numpy as np
    import pandas as pd
    from conftest import federation_toml

    rng = np.random.default_rng(5)
    tables = {
        site: {
            "d": pd.DataFrame(
                {"risk": rng.choice(["low", "high"], 150), "sex": rng.choice(["F", "M"], 150)}
            )
        }
        for site in DP_SITES
    }
    declared = (  # DP mode names only the levels the data stewards declare
        "[sites.{site}.policy]\ndp = true\n"
        "[sites.{site}.datasets.d.columns]\n"
        'risk = { type = "category", levels = ["high", "low"] }\n'
        'sex = { type = "category", levels = ["F", "M"] }\n'
    )
    return federation_toml(folder, tables, declared, name="dp")


@pytest.fixture(scope="module")
def dp_lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp_federation")
    config = dp_federation(folder)
    for info in run_lab(tmp_path_factory.mktemp("dp_lab"), str(config)):
        yield {**info, "config": config}


def test_the_sidebar_shows_the_dp_budget_left_at_each_site(dp_lab, browser):
    """DP mode: the Policy section lists this user's budget per site and dataset; a release made
    elsewhere (another process keeping the same sites' state) shows after a refresh."""
    import fedhem_kernel as fh

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{dp_lab['url']}lab?token={dp_lab['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=60_000)
    page.locator('.jp-SideBar [data-id="fedhem-sidebar"]').first.click()
    sidebar = page.locator("#fedhem-sidebar")
    budget = sidebar.locator(".fedhem-budget")
    budget.nth(len(DP_SITES) - 1).wait_for(timeout=60_000)
    assert budget.count() == len(DP_SITES)
    assert "d: ρ 0.00 of 1.00 spent" in budget.first.inner_text()
    # a DP release by the same user in another process sharing the sites' state
    with fh.Federation.from_config(
        dp_lab["config"], isolation="in-process", user="browser_test"
    ) as fed:
        fed.crosstab("d", "risk", "sex")
    page.locator("#fedhem-sidebar .fedhem-refresh").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('#fedhem-sidebar .fedhem-budget')]
            .every(e => e.textContent.includes('ρ 0.0500 of 1.00 spent'))""",
        timeout=30_000,
    )
    assert "ε 1.31 of 7.08" in budget.first.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sidebar.screenshot(path=str(SCREENSHOTS / "sidebar_dp_budget.png"))
    assert problems == []
