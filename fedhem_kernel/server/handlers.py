"""REST handlers behind the sidebar: ``{base_url}fedhem/api/{sites,catalog,policy,activity}``."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from fedhem_kernel.activity import ActivityLog, default_user
from fedhem_kernel.errors import FedHemError

if TYPE_CHECKING:
    from fedhem_kernel.federation import Federation

API_PATH = "fedhem/api"
MAX_ACTIVITY = 500
#: The authorization resource of every FedHem endpoint (``Authorizer.is_authorized``).
AUTH_RESOURCE = "fedhem"


class FederationUnavailable(Exception):
    """The federation could not be started (a site config, a site's data, the site host)."""


class FederationView:
    """The server's read-only handle on the federation named by ``FEDHEM_FEDERATION``.

    It asks the sites through the engine (catalog messages), never by loading their data: the
    sites run in a site host process of their own (``isolation="process"``), so nothing reachable
    from the server is a site, a dataset or a row. Started on first use (not at server start, so a
    slow or broken config never blocks Jupyter) and kept; calls are serialised.
    """

    def __init__(self, federation: Federation | None = None, *, loaded: bool = False) -> None:
        self._federation = federation
        self._loaded = loaded or federation is not None
        self._lock = threading.Lock()

    def _get(self) -> Federation | None:
        if not self._loaded:
            from fedhem_kernel.federation import federation_from_env  # the analysis stack, lazily

            try:
                self._federation = federation_from_env(isolation="process")
            except FedHemError as exc:  # names site, dataset, column and rule; never a value
                raise FederationUnavailable(f"the federation could not be loaded: {exc}") from exc
            except Exception as exc:
                raise FederationUnavailable(
                    f"the federation could not be loaded ({type(exc).__name__}); see the server log"
                ) from exc
            if self._federation is not None:
                # The server only reads the federation; the kernel records the researcher's queries.
                self._federation.activity = ActivityLog(None)
            self._loaded = True
        return self._federation

    def sites(self) -> dict[str, Any]:
        with self._lock:
            fed = self._get()
            if fed is None:
                return {"federation": None, "sites": []}
            frame = fed.sites
        sites = [
            {
                "name": row.site,
                "status": row.status,
                "datasets": [d for d in row.datasets.split(", ") if d],
            }
            for row in frame.itertuples(index=False)
        ]
        return {"federation": fed.name, "sites": sites}

    def catalog(self, dataset: str | None = None) -> dict[str, Any]:
        with self._lock:
            fed = self._get()
            if fed is None:
                return {"datasets": {}}
            frame = fed.catalog(dataset)
        datasets: dict[str, dict[str, dict[str, Any]]] = {}
        for row in frame.itertuples(index=False):
            columns = datasets.setdefault(row.dataset, {})
            entry = columns.setdefault(
                row.column,
                {
                    "column": row.column,
                    "dtype": row.dtype,
                    "unit": row.unit or None,
                    "bounds": None,
                    "levels": None,
                    "sites": [],
                },
            )
            entry["sites"].append(row.site)
            # what the sites' data stewards declare (public): the hull of the ranges, the union
            # of the levels in the order first declared
            if isinstance(row.bounds, list | tuple) and len(row.bounds) == 2:
                low, high = (float(b) for b in row.bounds)
                old = entry["bounds"]
                entry["bounds"] = (
                    [low, high] if old is None else [min(old[0], low), max(old[1], high)]
                )
            if isinstance(row.levels, list | tuple):
                known = entry["levels"] or []
                entry["levels"] = known + [str(v) for v in row.levels if str(v) not in known]
        return {"datasets": {ds: list(cols.values()) for ds, cols in sorted(datasets.items())}}

    def policy(self) -> dict[str, Any]:
        """Each site's rules and policy, and (DP mode) this user's budget there per dataset."""
        with self._lock:
            fed = self._get()
            policies = fed.policies if fed is not None else {}
            budget = (
                fed.budget() if fed is not None and any(p.dp for p in policies.values()) else None
            )
        spent: dict[str, dict[str, dict[str, float]]] = {}
        if budget is not None and not budget.empty:
            for row in budget.to_dict("records"):
                site, dataset = row.pop("site"), row.pop("dataset")
                spent.setdefault(site, {})[dataset] = {k: float(v) for k, v in row.items()}
        return {
            "sites": [
                {
                    "name": site,
                    "rules": p.describe_rules(),
                    "policy": p.to_dict(),
                    "budget": spent.get(site, {}),
                }
                for site, p in policies.items()
            ]
        }

    @staticmethod
    def activity(limit: int = 50) -> dict[str, Any]:
        user = default_user()
        return {"user": user, "queries": ActivityLog.default().read(user=user, limit=limit)}


class _FedHemHandler(APIHandler):
    """Base: every FedHem endpoint is authenticated (APIHandler answers 403, not a redirect) and
    authorized (the server's ``Authorizer`` decides for resource ``fedhem``, action ``read``)."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, view: FederationView) -> None:
        self.view = view

    async def _reply(self, fn: Any, *args: Any) -> None:
        try:
            body = await asyncio.to_thread(fn, *args)
        except FederationUnavailable as exc:
            self.log.warning("FedHem: %s", exc, exc_info=exc.__cause__)
            raise web.HTTPError(503, str(exc)) from None
        except FedHemError as exc:
            status = 404 if exc.dataset is not None and exc.column is None else 400
            raise web.HTTPError(status, str(exc)) from None
        except Exception as exc:  # a broken config or an unwritable site folder: say so, briefly
            self.log.exception("FedHem: the federation could not answer")
            raise web.HTTPError(
                503,
                f"the federation could not be loaded ({type(exc).__name__}); see the server log",
            ) from None
        self.finish(body)


class SitesHandler(_FedHemHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self._reply(self.view.sites)


class CatalogHandler(_FedHemHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self._reply(self.view.catalog, self.get_query_argument("dataset", None))


class PolicyHandler(_FedHemHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self._reply(self.view.policy)


class ActivityHandler(_FedHemHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw = self.get_query_argument("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        if not 1 <= limit <= MAX_ACTIVITY:
            raise web.HTTPError(400, f"limit must be between 1 and {MAX_ACTIVITY}")
        await self._reply(self.view.activity, limit)


#: endpoint name -> handler class; tests iterate over this to prove every one is authenticated.
ENDPOINTS: dict[str, type[_FedHemHandler]] = {
    "sites": SitesHandler,
    "catalog": CatalogHandler,
    "policy": PolicyHandler,
    "activity": ActivityHandler,
}


def setup_handlers(web_app: Any, view: FederationView) -> None:
    """Register the endpoints under the server's ``base_url``."""
    base_url = web_app.settings["base_url"]
    handlers = [
        (url_path_join(base_url, API_PATH, name) + "/?", cls, {"view": view})
        for name, cls in ENDPOINTS.items()
    ]
    web_app.add_handlers(".*$", handlers)
