"""A site node: the site executor with the site steps of every registered analysis.

Side: site. This is where the two halves of a site meet: ``fedhem_kernel.site`` (datasets, filters,
executor, audit, ClientApp), which never imports an analysis, and the analysis registry's site steps,
which this module hands over when it builds an executor. Nothing on the researcher's side imports the
site; embedded federations come through :func:`start_embedded` (sites hosted in this process behind
an endpoint address) and :func:`serve` (sites in a process of their own, spoken to over a pipe:
``fedhem serve-sites``, started by ``Federation.from_config(..., isolation="process")``).

Deployment: ``flower-supernode ... --node-config 'data-path="/data/site.toml"'`` with the ClientApp
``fedhem_kernel.node:app``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from flwr.app import Context
from flwr.clientapp import ClientApp

from fedhem_kernel.analyses import registry
from fedhem_kernel.errors import FedHemError, ParameterError, SchemaError
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol import endpoints
from fedhem_kernel.protocol.frames import HELLO, read_frame, write_frame
from fedhem_kernel.protocol.messages import SERVICE_STEPS
from fedhem_kernel.protocol.roster import Roster, public_key_text
from fedhem_kernel.site.app import make_client_app
from fedhem_kernel.site.config import DatasetDecl, SiteConfig, read_toml
from fedhem_kernel.site.executor import SiteExecutor
from fedhem_kernel.site.host import SiteHost
from fedhem_kernel.site.identity import SiteIdentity
from fedhem_kernel.site.secure_sum import SecureSumParty
from fedhem_kernel.site.steps import SiteStep

log = logging.getLogger("fedhem.site")


def site_steps() -> dict[str, SiteStep]:
    """Every registered analysis's site steps (its package's ``site.STEPS``), by step name.

    A step must belong to its package's analysis (the policy allows or refuses it by that name),
    and step names are unique across analyses.
    """
    steps: dict[str, SiteStep] = {}
    for analysis, package in registry.ANALYSES.items():
        module = importlib.import_module(f"{package}.site")
        for step in module.STEPS:
            if step.analysis != analysis:
                raise ValueError(
                    f"site step {step.name!r} of {package} belongs to {step.analysis!r}"
                )
            if step.name in steps or step.name in SERVICE_STEPS:
                raise ValueError(f"two site steps are named {step.name!r}")
            steps[step.name] = step
    return steps


def executor(
    config: SiteConfig,
    identity: SiteIdentity | None = None,
    roster: Roster | None = None,
    steps: Mapping[str, SiteStep] | None = None,
) -> SiteExecutor:
    """A site's executor: its datasets loaded (a load error is audited and raised), its site
    steps (default: every registered analysis's) and its part in secure sums.

    ``identity`` defaults to the key file the config names, ``roster`` to the config's ``[peers]``
    and the site itself; a site without an identity key takes part in no secure sum.
    """
    if identity is None and config.identity_key is not None:
        identity = SiteIdentity.from_file(config.name, config.identity_key)
    party = None
    if identity is not None:
        if roster is None:
            roster = Roster({**config.peers, config.name: identity.public_text})
        party = SecureSumParty(identity, roster, config.policy.secure_sum_min_sites)
    return SiteExecutor.from_config(config, site_steps() if steps is None else steps, party)


# -- deployment ----------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _executor_for(path: str, name: str | None) -> SiteExecutor:
    return executor(SiteConfig.from_toml(path, name=name))


def executor_from_node_config(context: Context) -> SiteExecutor:
    """Deployment: ``flower-supernode --node-config 'data-path="/data/site.toml"'``."""
    cfg = context.node_config
    name = cfg.get("site-name")
    return _executor_for(str(cfg["data-path"]), str(name) if name else None)


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use: importing this module loads no site's data
        value = make_client_app(executor_from_node_config, site_steps())
        globals()["app"] = value
        return value
    raise AttributeError(f"module 'fedhem_kernel.node' has no attribute {name!r}")


app: ClientApp  # the deployment ClientApp (see __getattr__)


# -- embedded federations ------------------------------------------------------------------------
def start_embedded(
    configs: Sequence[SiteConfig],
    steps: Mapping[str, SiteStep] | None = None,
    secure_sums: bool = True,
) -> tuple[str, dict[int, str]]:
    """Load the sites and host them in this process; their endpoint address and node names.

    The caller (a researcher-side grid) keeps the address only; closing it (``endpoints.unregister``)
    drops the sites. ``steps``: the site steps they run (default: every registered analysis's).
    ``secure_sums=False``: sites without identity keys, as sites outside a consortium's roster
    (they take part in no secure sum and release their own thresholded tables).
    """
    if not configs:
        raise ParameterError("a federation needs at least one site")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ParameterError("site names must be unique")
    identities = {
        c.name: (
            SiteIdentity.from_file(c.name, c.identity_key)
            if c.identity_key is not None
            else SiteIdentity.generate(c.name)
        )
        for c in configs
    }
    # the sites hosted together know each other's identity keys (the consortium's roster)
    roster = Roster({name: identity.public_key for name, identity in identities.items()})
    if not secure_sums:
        host = SiteHost([executor(c, None, None, steps) for c in configs])
        return endpoints.register(host.deliver), host.names
    host = SiteHost([executor(c, identities[c.name], roster, steps) for c in configs])
    return endpoints.register(host.deliver), host.names


def site_public_keys(address: str) -> dict[str, Any] | None:
    """The public identity key of every site hosted at ``address`` (None unless every one signs
    its replies: sites with identity keys of their own, from their configs)."""
    keys = {}
    for name, ex in embedded_host(address).executors.items():
        if ex.secure is None or not ex.sign_replies:
            return None
        keys[name] = ex.secure.identity.public_key
    return keys


def embedded_host(address: str) -> SiteHost:
    """The host of an embedded federation's sites (for the site side's own tools and tests)."""
    deliver = endpoints.lookup(address)
    host = getattr(deliver, "__self__", None)
    if not isinstance(host, SiteHost):
        raise ParameterError("no sites are hosted in this process at that address")
    return host


def demo_configs(seed: int = 2026, policy: Policy | None = None) -> list[SiteConfig]:
    """Four synthetic haematology sites (AML, MDS, MM, SCD and the MRI sub-study ``mm_imaging``)."""
    from fedhem_kernel.demo.cohorts import COLUMN_TYPES, DEMO_SITES, make_site_tables
    from fedhem_kernel.demo.imaging import IMAGING_DATASET, imaging_column_types, write_demo_imaging

    imaging = write_demo_imaging(seed)
    configs = []
    for site in DEMO_SITES:
        tables = make_site_tables(site, seed=seed)
        datasets = {ds: DatasetDecl(ds, df, COLUMN_TYPES.get(ds, {})) for ds, df in tables.items()}
        root, table = imaging[site]
        datasets[IMAGING_DATASET] = DatasetDecl(IMAGING_DATASET, table, imaging_column_types())
        configs.append(SiteConfig(site, datasets, policy or Policy(), data_root=root))
    return configs


def local_configs(
    sites: Mapping[str, Mapping[str, Any]],
    policy: Policy | Mapping[str, Policy] | None = None,
    *,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    audit_dir: str | Path | None = None,
    data_root: str | Path | Mapping[str, str | Path] | None = None,
) -> list[SiteConfig]:
    """Site configs of tables given in Python (see ``Federation.local``)."""
    configs = []
    for site, tables in sites.items():
        if isinstance(policy, Mapping):
            site_policy = policy.get(site, Policy())
        else:
            site_policy = policy or Policy()
        decls = {
            ds: DatasetDecl(ds, src, dict((columns or {}).get(ds, {})))
            for ds, src in tables.items()
        }
        audit = Path(audit_dir) / f"{site}.jsonl" if audit_dir is not None else None
        root = data_root.get(site) if isinstance(data_root, Mapping) else data_root
        configs.append(
            SiteConfig(
                site, decls, site_policy, audit, data_root=Path(root) if root is not None else None
            )
        )
    return configs


def federation_configs(path: str | Path) -> tuple[str, list[SiteConfig]]:
    """A federation TOML's name and its sites (``[sites.NAME] config = "site.toml"`` or inline)."""
    path = Path(path)
    data = read_toml(path, "federation config")
    sites = data.get("sites")
    if not isinstance(sites, Mapping) or not sites:
        raise SchemaError("federation config needs at least one [sites.NAME] table")
    configs = []
    for site, table in sites.items():
        if "config" in table:
            configs.append(SiteConfig.from_toml(path.parent / table["config"], name=site))
        else:
            configs.append(SiteConfig.from_mapping(table, base_dir=path.parent, name=site))
    name = str(data.get("federation", {}).get("name", path.stem))
    return name, configs


# -- sites in a process of their own ---------------------------------------------------------------
def serve(
    load: Callable[[], tuple[str, list[SiteConfig]]],
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    workers: int | None = None,
) -> int:
    """Host a federation's sites in this process, answering framed Flower messages on a pipe.

    ``load()`` gives the federation's name and its site configs. The first frame written is the
    start-up record: ``{"federation": name, "nodes": {node id: site}}``, or, if a site cannot be
    loaded, ``{"error": ...}`` (a :class:`~fedhem_kernel.errors.FedHemError` as a dict: site,
    dataset, column, rule, never a value) and the process ends with status 1. Then each request
    frame (request id, node id, wire bytes) is answered by that node's ClientApp on a thread pool,
    in completion order; the end of the input stream ends the process. Nothing else is written to
    ``stdout`` (the pipe): this process's own output goes to stderr.
    """
    if stdout is None:  # keep the pipe for frames; everything printed goes to stderr
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    stdin = stdin if stdin is not None else sys.stdin.buffer
    lock = threading.Lock()
    try:
        name, configs = load()
        address, names = start_embedded(configs)
    except Exception as exc:  # noqa: BLE001 - the researcher's side learns why, in our words
        if not isinstance(exc, FedHemError):
            log.exception("site host: the sites could not be loaded")
            exc = FedHemError(
                f"the sites could not be loaded ({type(exc).__name__}; see the site host's log)"
            )
        write_frame(stdout, HELLO, 1, json.dumps({"error": exc.to_dict()}).encode())
        return 1
    keys = site_public_keys(address)
    hello = {
        "federation": name,
        "nodes": {str(i): n for i, n in names.items()},
        "keys": {n: public_key_text(k) for n, k in keys.items()} if keys is not None else None,
    }
    write_frame(stdout, HELLO, 0, json.dumps(hello).encode())

    def answer(request_id: int, node_id: int, wire: bytes) -> None:
        try:
            reply, status = endpoints.deliver(address, node_id, wire), 0
        except Exception:  # noqa: BLE001 - no text of the failure crosses (the site logs it)
            log.exception("site host: node %s failed", node_id)
            reply, status = b"the site's ClientApp failed", 1
        with lock:
            write_frame(stdout, request_id, status, reply)

    pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
    try:
        while (frame := read_frame(stdin)) is not None:
            pool.submit(answer, *frame)
    finally:
        pool.shutdown(wait=True)
        endpoints.unregister(address)
    return 0
