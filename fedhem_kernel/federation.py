"""The researcher-facing client: ``fh.Federation``.

Every analysis goes through the engine: the coordinator sends a typed Flower message to each site's
ClientApp, the site executor runs the site step and its privacy checks on its own rows, and only the
checked release comes back to be combined here. Nothing in this module can read a site's rows.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pandas as pd

from fedhem_kernel.activity import ActivityLog, default_user
from fedhem_kernel.analyses import registry
from fedhem_kernel.engine.coordinator import Coordinator, Query
from fedhem_kernel.engine.local_grid import InProcess, LocalGrid
from fedhem_kernel.engine.site_process import SiteProcess
from fedhem_kernel.errors import FedHemError, ParameterError, SchemaError
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.auth import ResearcherKey
from fedhem_kernel.protocol.messages import AUDIT_STEP, BUDGET_STEP, CATALOG_STEP, SiteRequest
from fedhem_kernel.protocol.params import check_arguments
from fedhem_kernel.protocol.where import parse_where

if TYPE_CHECKING:
    from fedhem_kernel.analyses.combat.result import CombatResult
    from fedhem_kernel.analyses.cox.result import CoxResult
    from fedhem_kernel.analyses.crosstab.result import CrosstabResult
    from fedhem_kernel.analyses.cumulative_incidence.result import CumulativeIncidenceResult
    from fedhem_kernel.analyses.describe.result import DescribeResult
    from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
    from fedhem_kernel.analyses.kmeans.result import KMeansResult
    from fedhem_kernel.analyses.logrank.result import LogrankResult
    from fedhem_kernel.analyses.pca.result import PCAResult
    from fedhem_kernel.analyses.radiomics.result import RadiomicsResult

R = TypeVar("R")
#: Where embedded sites run: in this process, or in a site host process of their own.
Isolation = Literal["in-process", "process"]
ISOLATIONS = ("in-process", "process")


class Federation:
    """A set of sites you can query; results come back checked by each site's policy.

    Build one with :meth:`demo`, :meth:`local` or :meth:`from_config` (all embedded: the sites run
    in this process behind the same Flower message path a deployment uses).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        user: str | None = None,
        name: str = "federation",
        activity: ActivityLog | None = None,
    ) -> None:
        #: The coordinator: sends site step requests over the grid and reads the replies. Public
        #: on purpose: in a deployment the researcher runs it, so every site must be safe against
        #: hand-made requests (``fed.coordinator.send(SiteRequest(...), sites=[...])``).
        self.coordinator = coordinator
        self.user = user or default_user()
        self.name = name
        #: Where finished queries are listed for the sidebar (see :mod:`fedhem_kernel.activity`).
        self.activity = activity if activity is not None else ActivityLog.default()
        #: The fewest sites that must answer (released, suppressed or refused: not failed or
        #: silent) for a result to be released; None: no minimum (see :meth:`configure`).
        self.min_sites: int | None = None

    def configure(self, *, timeout: float | None = None, min_sites: int | None = None) -> None:
        """Fault handling: ``timeout`` (seconds each round waits for the sites; a site that has
        not answered by then counts as not answering) and ``min_sites`` (the fewest sites that
        must answer for a result to be released: a result with fewer raises an error naming the
        sites missing and why; a released result lists them in its privacy report)."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise ParameterError("'timeout' must be a positive number of seconds")
            self.coordinator.timeout = float(timeout)
            isolate = getattr(self.coordinator.grid, "isolate_sites", None)
            if isolate is not None:  # a thread per site: the timeout stops waiting for a slow
                isolate()  # site, and a slow site never holds back another
        if min_sites is not None:
            n = len(self.coordinator.site_names)
            if (
                isinstance(min_sites, bool)
                or not isinstance(min_sites, int)
                or not 1 <= min_sites <= n
            ):
                raise ParameterError(f"'min_sites' must be a whole number from 1 to {n}")
            self.min_sites = min_sites

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def _embedded(
        cls, address: str, names: Mapping[int, str], *, name: str, user: str | None
    ) -> Federation:
        """A federation of sites hosted in this process at ``address`` (the grid keeps only it)."""
        grid = LocalGrid(InProcess(address), list(names))
        coordinator = Coordinator(grid, dict(names))
        from fedhem_kernel import node  # the host is in this process: its sites' public keys

        coordinator.site_keys = node.site_public_keys(address)
        return cls(coordinator, user=user, name=name)

    @classmethod
    def _site_process(
        cls, config: str, argv: Sequence[str] | None, *, user: str | None
    ) -> Federation:
        """A federation whose sites run in a site host process (this process loads no data)."""
        transport = SiteProcess(config, argv=argv)
        grid = LocalGrid(transport, list(transport.names))
        coordinator = Coordinator(grid, transport.names)
        coordinator.site_keys = transport.keys  # from the host this process started
        return cls(coordinator, user=user, name=transport.federation)

    @classmethod
    def demo(
        cls,
        seed: int = 2026,
        policy: Policy | None = None,
        *,
        user: str | None = None,
        isolation: Isolation = "in-process",
    ) -> Federation:
        """Four synthetic haematology sites (AML, MDS, MM, SCD) with the default policy.

        Each site also holds ``mm_imaging``: a myeloma MRI sub-study whose images (NRRD phantoms)
        are written once into a cache folder (``FEDHEM_CACHE``, else ``~/.cache/fedhem``) and
        reused; that folder is the site's data root. ``isolation="process"`` runs the sites in a
        process of their own (this process then holds no site data; the default policy only).
        """
        if _check_isolation(isolation) == "process":
            if policy is not None:
                raise ParameterError("isolation='process' runs the demo with its own policy")
            argv = ["-m", "fedhem_kernel", "serve-sites", "demo", "--seed", str(int(seed))]
            return cls._site_process("demo", argv, user=user)
        from fedhem_kernel import node  # the site side: hosts the sites behind an address

        address, names = node.start_embedded(node.demo_configs(seed, policy))
        return cls._embedded(address, names, name="demo", user=user)

    @classmethod
    def local(
        cls,
        sites: Mapping[str, Mapping[str, pd.DataFrame | str | Path]],
        policy: Policy | Mapping[str, Policy] | None = None,
        *,
        columns: Mapping[str, Mapping[str, Any]] | None = None,
        audit_dir: str | Path | None = None,
        data_root: str | Path | Mapping[str, str | Path] | None = None,
        user: str | None = None,
    ) -> Federation:
        """Embedded sites from your own tables: ``{"site_a": {"aml": df_or_path}, ...}``.

        ``policy`` is one Policy for every site or a mapping site -> Policy; ``columns`` declares
        column types per dataset (``{"aml": {"os_months": {"type": "float", "unit": "months"}}}``;
        ``{"mri": {"image": "image", "mask": "mask", "patient_id": {"type": "category", "key":
        True}}}`` for an imaging dataset). ``data_root`` (one folder, or site -> folder) is where the
        paths of image and mask columns point. The federation keeps no reference to the tables.
        """
        from fedhem_kernel import node

        configs = node.local_configs(
            sites, policy, columns=columns, audit_dir=audit_dir, data_root=data_root
        )
        address, names = node.start_embedded(configs)
        return cls._embedded(address, names, name="local", user=user)

    @classmethod
    def from_config(
        cls,
        path: str | Path,
        *,
        user: str | None = None,
        isolation: Isolation = "in-process",
        key: str | Path | None = None,
        timeout: float | None = None,
        min_sites: int | None = None,
    ) -> Federation:
        """Sites and policies from a federation TOML (``[sites.NAME] config = "site.toml"``).

        ``isolation="process"``: the sites load and run in a site host process of their own
        (``fedhem serve-sites``), so this process never holds their data; the kernel's
        ``%fed connect`` and the Jupyter server extension use it. ``"in-process"`` (default): the
        sites run in this process, behind the same message path.

        ``key``: the researcher's private key file (Ed25519, OpenSSH form: ``fedhem keys``);
        every request is then signed with it. A site that lists researchers (``[researchers]``
        in its config) answers only requests signed by one of their keys, and records the
        researcher by the name it gave that key. Default: ``$FEDHEM_KEY`` if set.

        ``timeout`` and ``min_sites``: fault handling, as :meth:`configure`.
        """
        signer = _researcher_key(key)
        if _check_isolation(isolation) == "process":
            fed = cls._site_process(str(Path(path).resolve()), None, user=user)
        else:
            from fedhem_kernel import node

            name, configs = node.federation_configs(path)
            address, names = node.start_embedded(configs)
            fed = cls._embedded(address, names, name=name, user=user)
        fed.coordinator.signer = signer
        try:
            fed.configure(timeout=timeout, min_sites=min_sites)
        except ParameterError:
            fed.close()
            raise
        return fed

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Federation:
        """Deployment against a real SuperLink: not available yet (see docs/architecture.md)."""
        raise NotImplementedError(
            "Federation.connect (deployment against a Flower SuperLink) is not implemented yet; "
            "use Federation.demo(), .local() or .from_config()"
        )

    # -- federation info ------------------------------------------------------------------------
    def _catalog_replies(self) -> dict[str, Any]:
        request = SiteRequest(CATALOG_STEP, None, {}, None, self.user)
        replies = self.coordinator.send(request)
        return {s: replies[s] for s in self.coordinator.site_names if s in replies}

    @property
    def sites(self) -> pd.DataFrame:
        """One row per site: its name, whether it answers, and its datasets."""
        rows = []
        for site, reply in self._catalog_replies().items():
            if reply.payload is not None:
                rows.append(
                    {
                        "site": site,
                        "status": "online",
                        "datasets": ", ".join(sorted(reply.payload["datasets"])),
                    }
                )
            else:
                rows.append({"site": site, "status": "error", "datasets": ""})
        return pd.DataFrame(rows, columns=["site", "status", "datasets"])

    def catalog(self, dataset: str | None = None) -> pd.DataFrame:
        """Columns and types at each site (never values); ``derived`` names the analysis that made
        a column at the site (``kmeans``, ``radiomics``, ...), empty for loaded columns;
        ``bounds`` the public range a site's data steward declares for a number (DP mode clips
        to it), ``levels`` the levels declared for a grouping column (DP mode names only these)."""
        rows = []
        for site, reply in self._catalog_replies().items():
            if reply.payload is None:
                continue
            for ds, cols in reply.payload["datasets"].items():
                if dataset is not None and ds != dataset:
                    continue
                for c in cols:
                    rows.append({"site": site, "dataset": ds, **c})
        columns = ["site", "dataset", "column", "dtype", "unit", "derived", "bounds", "levels"]
        df = pd.DataFrame(rows, columns=columns)
        if dataset is not None and df.empty:
            raise SchemaError("no such dataset at any site", dataset=dataset)
        return df

    @property
    def policies(self) -> dict[str, Policy]:
        """Each site's policy, as the site reports it."""
        return {
            site: Policy.from_dict(reply.payload["policy"])
            for site, reply in self._catalog_replies().items()
            if reply.payload is not None
        }

    def budget(self) -> pd.DataFrame:
        """Your DP budget at each site in DP mode: per site and dataset, ρ spent, its cap and what is
        left (``rho_left`` also respects the site's total for all researchers), and spent and cap as
        ε at δ = 1e-5. Empty when no site is in DP mode.
        """
        replies = self.coordinator.send(SiteRequest(BUDGET_STEP, None, {}, None, self.user))
        rows = []
        for site in self.coordinator.site_names:
            reply = replies.get(site)
            if reply is None or reply.payload is None:
                continue
            for dataset, spent in reply.payload.get("datasets", {}).items():
                rows.append({"site": site, "dataset": dataset, **spent})
        return pd.DataFrame(rows)

    def audit_log(self, site: str | None = None) -> pd.DataFrame:
        """What each site's audit log holds of your own requests (the site keeps the whole log).

        Asked of the sites through the engine (the ``audit`` step): one row per request, with the
        site's outcome, rule and details as it recorded them, never another researcher's entries.
        """
        names = self.coordinator.site_names
        if site is not None and site not in names:
            raise ParameterError(f"no site '{site}' in this federation")
        request = SiteRequest(AUDIT_STEP, None, {}, None, self.user)
        replies = self.coordinator.send(request, None if site is None else [site])
        rows = []
        for name in names if site is None else [site]:
            reply = replies.get(name)
            if reply is None or reply.payload is None:
                continue
            rows += [{"site": name, **e} for e in reply.payload["entries"]]
        return pd.DataFrame(rows)

    # -- analyses -------------------------------------------------------------------------------
    def run(self, analysis: str, dataset: str, *, where: str | None = None, **params: Any) -> Any:
        """Run any registered analysis on ``dataset``: the generic call behind every method below.

        ``params`` are the analysis's own (its combine step's ``run(query, **params)``, see
        :mod:`fedhem_kernel.analyses.registry`), checked against the package's ``PARAMS`` before
        anything is sent (an unknown name, or a value of a kind it does not accept, is a
        :class:`~fedhem_kernel.errors.ParameterError`); ``where`` filters the cohort at every site.
        The query is listed, with its privacy outcome, in this user's activity.

        Examples
        --------
        >>> fed.run("kaplan_meier", "aml", duration="os_months", event="os_status")  # doctest: +SKIP
        """
        try:
            package = registry.package(analysis)
        except KeyError:
            raise ParameterError(
                f"unknown analysis {analysis!r}; registered: {', '.join(registry.names())}"
            ) from None
        spec = getattr(importlib.import_module(package), "PARAMS", None)
        if spec is not None:  # before anything is sent; each site checks its request again
            check_arguments(analysis, spec, params, dataset)
        combine = importlib.import_module(f"{package}.combine")
        q = self._query(analysis, dataset, where)
        return self._execute(q, lambda q: combine.run(q, **params))

    def _query(self, analysis: str, dataset: str, where: str | None) -> Query:
        if not isinstance(dataset, str) or not dataset:
            raise ParameterError("'dataset' must be a dataset name")
        if where is not None:
            if not isinstance(where, str):
                raise ParameterError("'where' must be a string such as \"age >= 60\"")
            try:
                parse_where(where)  # syntax here; every site checks it again against its schema
            except FedHemError as exc:
                raise type(exc)(
                    exc.reason, dataset=dataset, column=exc.column, rule=exc.rule
                ) from None
        return Query(self.coordinator, analysis, dataset, where, self.user)

    def _execute(self, q: Query, combine: Callable[[Query], R]) -> R:
        """Run one analysis and list it, with its privacy outcome, in this user's activity."""
        try:
            result = combine(q)
            self._enough_sites(q)
        except BaseException as exc:
            q.finish(exc)  # closes the progress display
            if isinstance(exc, FedHemError):
                self._log_activity(q, report=q.report(), error=exc)
            raise
        q.finish()
        self._log_activity(q, report=getattr(result, "privacy", None) or q.report())
        return result

    def _enough_sites(self, q: Query) -> None:
        """Refuse to release a result fewer than :attr:`min_sites` sites answered."""
        if self.min_sites is None:
            return
        report = q.report()
        missing = [o for o in report.outcomes if o.status == "error"]
        answered = len(report.outcomes) - len(missing)
        if answered < self.min_sites:
            why = "; ".join(f"{o.site}: {(o.details or ['no reply'])[0]}" for o in missing)
            raise FedHemError(
                f"only {answered} of {len(report.outcomes)} sites answered (min_sites="
                f"{self.min_sites}): the result is not released. Missing: {why}",
                dataset=q.dataset,
            )

    def _log_activity(self, q: Query, **outcome: Any) -> None:
        self.activity.record(
            query_id=q.query_id,
            user=self.user,
            analysis=q.analysis,
            dataset=q.dataset,
            where=q.where,
            federation=self.name,
            **outcome,
        )

    def describe(
        self,
        dataset: str,
        columns: str | Sequence[str] | None = None,
        by: str | None = None,
        where: str | None = None,
    ) -> DescribeResult:
        """Count, mean, SD and quantiles (from pooled histograms) of numeric columns."""
        return self.run("describe", dataset, where=where, columns=columns, by=by)

    def crosstab(
        self, dataset: str, row: str, col: str, where: str | None = None, margins: bool = False
    ) -> CrosstabResult:
        """Counts by two categorical columns (``col="site"`` for one column per site)."""
        return self.run("crosstab", dataset, where=where, row=row, col=col, margins=margins)

    def kaplan_meier(
        self,
        dataset: str,
        duration: str,
        event: str,
        group: str | None = None,
        where: str | None = None,
    ) -> KaplanMeierResult:
        """Pooled Kaplan–Meier curves (one per group) with Greenwood intervals."""
        return self.run(
            "kaplan_meier", dataset, where=where, duration=duration, event=event, group=group
        )

    def logrank(
        self,
        dataset: str,
        duration: str,
        event: str,
        group: str,
        strata: str | Sequence[str] | None = None,
        weightings: str | None = None,
        p: float | None = None,
        q: float | None = None,
        where: str | None = None,
    ) -> LogrankResult:
        """Log-rank test of equal survival across the levels of ``group``.

        ``strata``: a column, a list of columns or ``"site"`` for a stratified test (observed minus
        expected and its variance summed over strata). ``weightings`` as lifelines'
        ``multivariate_logrank_test``: ``None``, ``"wilcoxon"``, ``"tarone-ware"``, ``"peto"`` or
        ``"fleming-harrington"`` (with ``p`` and ``q``).
        """
        return self.run(
            "logrank",
            dataset,
            where=where,
            duration=duration,
            event=event,
            group=group,
            strata=strata,
            weightings=weightings,
            p=p,
            q=q,
        )

    def cumulative_incidence(
        self,
        dataset: str,
        duration: str,
        event: str,
        event_of_interest: int | str | None = None,
        group: str | None = None,
        where: str | None = None,
        cause_names: Mapping[int, str] | None = None,
        combine_competing: bool = False,
    ) -> CumulativeIncidenceResult:
        """Cumulative incidence of competing causes (Aalen–Johansen), with Gray's test by ``group``.

        ``event`` is a numeric column coded 0 = censored, 1, 2, ... = the cause of the event
        (e.g. 1 = relapse, 2 = death without relapse). ``event_of_interest`` (a code, or a name
        from ``cause_names``; default the lowest cause) is the cause Gray's test compares across the
        levels of ``group``. ``cause_names`` labels the causes, e.g. ``{1: "relapse"}``.
        ``combine_competing=True`` counts every other cause as one "competing causes" curve (use it
        when a rare cause makes a site withhold its table).
        """
        return self.run(
            "cumulative_incidence",
            dataset,
            where=where,
            duration=duration,
            event=event,
            event_of_interest=event_of_interest,
            group=group,
            cause_names=cause_names,
            combine_competing=combine_competing,
        )

    def cox(
        self,
        dataset: str,
        duration: str,
        event: str,
        covariates: str | Sequence[str],
        strata: str | Sequence[str] | None = None,
        ties: str = "efron",
        where: str | None = None,
        diagnostics: bool = True,
        concordance_bins: int = 64,
    ) -> CoxResult:
        """Cox proportional-hazards model, fitted on the pooled partial likelihood.

        ``covariates``: numeric columns enter as they are; categorical columns as 0/1 columns for
        every level but the first in sorted order (named ``column_level``). ``strata``: a column, a
        list of columns, or ``"site"`` for a separate baseline hazard per site. ``ties``:
        ``"efron"`` (lifelines' default) or ``"breslow"`` (scikit-survival's default). The result
        is named as lifelines' ``CoxPHFitter`` (``summary``, ``params_``, ``variance_matrix_``,
        ``log_likelihood_``, ``log_likelihood_ratio_test()``), plus ``concordance_index_``
        (Harrell's C; pairs across sites compared on ``concordance_bins`` score bins, with
        ``concordance_bounds_``), ``proportional_hazard_test()`` (scaled Schoenfeld residuals, as
        lifelines) and ``plot()`` (forest plot). ``diagnostics=False`` skips those two extra rounds.
        """
        return self.run(
            "cox",
            dataset,
            where=where,
            duration=duration,
            event=event,
            covariates=covariates,
            strata=strata,
            ties=ties,
            diagnostics=diagnostics,
            concordance_bins=concordance_bins,
        )

    def kmeans(
        self,
        dataset: str,
        features: str | Sequence[str],
        k: int,
        init: str | Any = "k-means++",
        standardize: bool = True,
        seed: int = 0,
        max_iter: int = 300,
        tol: float = 1e-4,
        where: str | None = None,
    ) -> KMeansResult:
        """k-means (Lloyd) on numeric ``features``; labels stay at each site as column ``cluster``.

        ``init``: ``"k-means++"`` (a federated variant that never releases a patient's row, seeded
        by ``seed``) or an array (k x features) of start centres in original units. ``standardize``
        clusters on features scaled by their pooled mean and SD (centres are reported in original
        units). ``max_iter`` and ``tol`` as scikit-learn's ``KMeans``. Afterwards
        ``fed.describe(dataset, by="cluster")``, ``fed.kaplan_meier(..., group="cluster")`` or
        ``result.profile(fed, [...])`` describe the clusters.
        """
        return self.run(
            "kmeans",
            dataset,
            where=where,
            features=features,
            k=k,
            init=init,
            standardize=standardize,
            seed=seed,
            max_iter=max_iter,
            tol=tol,
        )

    def pca(
        self,
        dataset: str,
        features: str | Sequence[str],
        n_components: int | None = None,
        standardize: bool = True,
        where: str | None = None,
    ) -> PCAResult:
        """Principal components of numeric ``features`` from the pooled covariance matrix.

        ``standardize=True`` uses features scaled by their pooled SD (the correlation matrix).
        ``result.transform(kmeans.cluster_centers)`` and ``result.plot_centers(kmeans)`` place the
        centres of a k-means result on the components.
        """
        return self.run(
            "pca",
            dataset,
            where=where,
            features=features,
            n_components=n_components,
            standardize=standardize,
        )

    def radiomics(
        self,
        dataset: str,
        params: Mapping[str, Any] | str | Path | None = None,
        where: str | None = None,
    ) -> RadiomicsResult:
        """pyradiomics features of every image in ``dataset``, extracted at each site.

        ``params``: a pyradiomics parameter dict or YAML file (``setting``, ``imageType``,
        ``featureClass``); None for pyradiomics' defaults. Released: a summary per feature (count,
        mean, SD, quantiles); the per-patient features stay at each site as columns of ``dataset``
        (``result.columns``), usable in ``describe``, ``cox``, ``kmeans`` and ``combat``.
        """
        return self.run("radiomics", dataset, where=where, params=params)

    def combat(
        self,
        dataset: str,
        features: str | Sequence[str],
        batch: str | None = None,
        covariates: str | Sequence[str] = (),
        where: str | None = None,
        suffix: str = "_combat",
        eb: bool = True,
        parametric: bool = True,
        mean_only: bool = False,
    ) -> CombatResult:
        """ComBat harmonisation of numeric ``features`` across batches, as neuroCombat.

        ``batch=None``: each site is one batch (scanner/site effects). ``batch="scanner"``: a
        categorical column; a batch is a (site, value) pair, so a batch never spans sites.
        ``covariates``: columns whose effects are preserved (numeric ones as they are, category and
        bool ones as 0/1 columns for every level but the first). ``eb``, ``parametric`` and
        ``mean_only`` as neuroCombat. Each site keeps the harmonised values as columns
        ``<feature><suffix>`` (missing for patients left out for a missing value); only per-batch
        sums leave it. ``result.batch_effects`` (gamma_star, delta_star), ``result.summary``
        (per batch mean and SD before and after); later queries use ``result.columns``.
        """
        return self.run(
            "combat",
            dataset,
            where=where,
            features=features,
            batch=batch,
            covariates=covariates,
            suffix=suffix,
            eb=eb,
            parametric=parametric,
            mean_only=mean_only,
        )

    # -- housekeeping ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the grid (embedded sites hosted for this federation are shut down)."""
        grid = self.coordinator.grid
        if isinstance(grid, LocalGrid):
            grid.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Federation({self.name!r}, sites={self.coordinator.site_names})"

    def _repr_html_(self) -> str:
        return f"<b>FedHem federation '{self.name}'</b>" + self.sites.to_html(index=False)


def federation_from_env(isolation: Isolation | None = None) -> Federation | None:
    """The kernel's ``fed``: ``FEDHEM_FEDERATION`` = ``demo`` (default), ``none`` or a TOML path.

    ``isolation`` as for :meth:`Federation.from_config`; by default the demo's synthetic sites
    run in this process (ready at once) and a federation TOML's sites in a site host process, so
    the kernel never loads a site's data.
    """
    value = os.environ.get("FEDHEM_FEDERATION", "demo").strip()
    if value.lower() in ("", "demo"):
        return Federation.demo(isolation=isolation or "in-process")
    if value.lower() == "none":
        return None
    return Federation.from_config(value, isolation=isolation or "process")


def _researcher_key(key: str | Path | None) -> ResearcherKey | None:
    """The researcher's signing key: ``key``, else ``$FEDHEM_KEY``, else none."""
    path = key if key is not None else os.environ.get("FEDHEM_KEY") or None
    return ResearcherKey.from_file(path) if path is not None else None


def _check_isolation(isolation: Any) -> str:
    if isolation not in ISOLATIONS:
        raise ParameterError(f"'isolation' must be one of {', '.join(ISOLATIONS)}")
    return str(isolation)
