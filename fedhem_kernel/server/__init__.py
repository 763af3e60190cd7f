"""The FedHem Jupyter server extension: a read-only REST API for the JupyterLab sidebar.

Enabled by ``etc/jupyter/jupyter_server_config.d/fedhem_kernel.json`` (shipped in the wheel). Endpoints,
all under ``{base_url}fedhem/api/``, all requiring an authenticated user that the server's authorizer
allows to read resource ``fedhem`` (403 otherwise):

``sites``     each site's name, status and datasets
``catalog``   columns and types per dataset (never values)
``policy``    each site's rules, in plain words and as settings
``activity``  this user's queries with their privacy outcome, newest first

The server asks the sites of ``FEDHEM_FEDERATION`` (the same variable the kernel reads) through the
engine, with catalog messages; the sites run in a site host process of their own, so the server
never loads their data. It never runs an analysis.
"""

from __future__ import annotations

from typing import Any

from fedhem_kernel.server.handlers import API_PATH, FederationView, setup_handlers

__all__ = ["API_PATH", "FederationView", "setup_handlers"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "fedhem_kernel.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    view = FederationView()
    setup_handlers(serverapp.web_app, view)
    serverapp.log.info("FedHem server extension: %s/", API_PATH)
