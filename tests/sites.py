"""The site side of an embedded federation, for tests that look at a site's own state.

A researcher's objects hold no site (``test_boundary.py``); a test that needs a site's datasets,
guard or derived columns asks the site host that the federation's endpoint address names, as a
hospital's own tools would.
"""

from __future__ import annotations

from fedhem_kernel import node
from fedhem_kernel.site.executor import SiteExecutor


def sites_of(fed) -> dict[str, SiteExecutor]:
    """Site name -> the executor of an embedded federation's site."""
    return node.embedded_host(fed.coordinator.grid.transport.address).executors


def grid_of_apps(nodes, **kwargs):
    """A LocalGrid whose nodes are the given ``{node_id: (ClientApp, Context)}``, hosted in this
    process behind an endpoint address as embedded sites are."""
    from fedhem_kernel.engine.local_grid import InProcess, LocalGrid
    from fedhem_kernel.protocol import endpoints
    from fedhem_kernel.site.host import AppHost

    address = endpoints.register(AppHost(nodes).deliver)
    return LocalGrid(InProcess(address), list(nodes), **kwargs)


def site_audit(fed):
    """Every entry of every site's own audit log (the site side's view: loads, every researcher),
    as a DataFrame with a ``site`` column."""
    import pandas as pd

    rows = [
        {"site": name, **entry}
        for name, ex in sites_of(fed).items()
        for entry in ex.audit.entries()
    ]
    return pd.DataFrame(rows)
