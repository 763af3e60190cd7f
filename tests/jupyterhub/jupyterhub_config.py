"""JupyterHub config used by tests/test_jupyterhub.py: a local hub serving FedHem single-user servers.

Everything machine-specific comes from FEDHEM_HUB_* environment variables set by the test (ports, the
temporary directory, the proxy command, the service token), so this file reads like a deployment config:
the lines under "What a FedHem deployment sets" are the ones docs/jupyterhub.md recommends.
Run by hand (from the repo root, after `make hub-proxy`)::

    FEDHEM_HUB_DIR=/tmp/hub FEDHEM_HUB_PORT=8000 FEDHEM_HUB_API_PORT=8081 \
    FEDHEM_HUB_PROXY_API_PORT=8001 FEDHEM_HUB_TOKEN=$(openssl rand -hex 32) \
    FEDHEM_HUB_PROXY_CMD='["node", "tests/jupyterhub/node_modules/configurable-http-proxy/bin/configurable-http-proxy"]' \
    FEDHEM_HUB_SINGLEUSER=.venv/bin/jupyterhub-singleuser \
    .venv/bin/jupyterhub -f tests/jupyterhub/jupyterhub_config.py
"""

import json
import os
from pathlib import Path

c = get_config()  # noqa: F821 (injected by traitlets when JupyterHub loads this file)

env = os.environ
work = Path(env["FEDHEM_HUB_DIR"])

# -- The local test hub: 127.0.0.1 only, random ports, state in a temporary directory ------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{env['FEDHEM_HUB_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env['FEDHEM_HUB_API_PORT']}"
c.JupyterHub.db_url = f"sqlite:///{work / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(work / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(work / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops the single-user servers
c.JupyterHub.cleanup_proxy = True  # ... and the proxy it started
c.JupyterHub.log_level = "INFO"

c.ConfigurableHTTPProxy.command = json.loads(env["FEDHEM_HUB_PROXY_CMD"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env['FEDHEM_HUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = str(work / "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.debug = False

# Any user name logs in; fine for a test hub bound to 127.0.0.1, never for a real one.
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True

# Servers run as the hub's own OS user with HOME under the temporary directory (no system users).
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(work / "homes" / "{username}")
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60

# The test talks to the hub REST API as this service: create users, start servers, issue tokens.
c.JupyterHub.services = [{"name": "fedhem-test", "api_token": env["FEDHEM_HUB_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "fedhem-test",
        "scopes": ["admin:users", "admin:servers", "tokens"],
        "services": ["fedhem-test"],
    }
]

# -- What a FedHem deployment sets (see docs/jupyterhub.md) ----------------------------------------
# The single-user server from the environment FedHem is installed in (kernelspec --sys-prefix, server
# extension enabled through etc/jupyter/jupyter_server_config.d).
c.Spawner.cmd = [env["FEDHEM_HUB_SINGLEUSER"]]
c.Spawner.args = ["--MultiKernelManager.default_kernel_name=fedhem"]
if os.getuid() == 0:  # the test (and CI) run as root
    c.Spawner.args.append("--allow-root")
c.Spawner.default_url = "/lab"
c.Spawner.environment = {
    "FEDHEM_FEDERATION": "demo",  # or the path of a federation TOML readable by the user
    # Who the sites' audit logs name; a callable is called with the spawner (strings are not templated).
    "FEDHEM_USER": lambda spawner: f"{spawner.user.name}@fedhem-test",
}
