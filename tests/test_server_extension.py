"""The server extension's REST API: what the sidebar reads, authenticated, no values."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

import fedhem_kernel as fh
from fedhem_kernel.activity import ActivityLog
from fedhem_kernel.server import handlers
from fedhem_kernel.server.handlers import ENDPOINTS, FederationView

pytestmark = pytest.mark.slow

DEMO_SITES = ["karolinska", "charite", "hopital_st_louis", "policlinico_bari"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"fedhem_kernel": True}}}


@pytest.fixture
def activity(tmp_path, monkeypatch):
    path = tmp_path / "activity.jsonl"
    monkeypatch.setenv("FEDHEM_ACTIVITY", str(path))
    monkeypatch.setenv("FEDHEM_USER", "dr_test")
    return path


@pytest.fixture(autouse=True)
def demo_env(monkeypatch):
    monkeypatch.setenv("FEDHEM_FEDERATION", "demo")


async def get(jp_fetch, name, **params):
    response = await jp_fetch("fedhem", "api", name, params=params)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def test_sites_lists_the_demo_federation(jp_fetch):
    body = await get(jp_fetch, "sites")
    assert body["federation"] == "demo"
    assert [s["name"] for s in body["sites"]] == DEMO_SITES
    for site in body["sites"]:
        assert site["status"] == "online"
        assert set(site["datasets"]) == {"aml", "mds", "mm", "scd", "mm_imaging"}


async def test_catalog_has_columns_and_types_never_values(jp_fetch):
    body = await get(jp_fetch, "catalog", dataset="aml")
    assert list(body["datasets"]) == ["aml"]
    columns = {c["column"]: c for c in body["datasets"]["aml"]}
    assert columns["os_months"]["dtype"] == "float"
    assert columns["os_months"]["unit"] == "months"
    assert columns["os_months"]["sites"] == DEMO_SITES
    assert set(columns["os_months"]) == {"column", "dtype", "unit", "bounds", "levels", "sites"}
    # what the data stewards declare (public metadata, never read from the data)
    assert columns["age"]["bounds"] == [0.0, 100.0] and columns["age"]["levels"] is None
    assert columns["sex"]["levels"] == ["F", "M"] and columns["sex"]["bounds"] is None
    everything = await get(jp_fetch, "catalog")
    assert set(everything["datasets"]) == {"aml", "mds", "mm", "scd", "mm_imaging"}


async def test_catalog_of_an_unknown_dataset_is_a_clear_404(jp_fetch):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedhem", "api", "catalog", params={"dataset": "nope"})
    assert info.value.code == 404
    assert "nope" in json.loads(info.value.response.body)["message"]


async def test_policy_in_plain_words_per_site(jp_fetch):
    body = await get(jp_fetch, "policy")
    assert [s["name"] for s in body["sites"]] == DEMO_SITES
    for site in body["sites"]:
        assert site["policy"]["min_cell_count"] == 5
        assert "Every released count is 0 or at least 5." in site["rules"]
        assert site["budget"] == {}  # no site of the demo is in DP mode


async def test_activity_lists_this_users_queries_newest_first(jp_fetch, activity):
    fed = fh.Federation.demo()
    fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
    with pytest.raises(fh.DisclosureError):  # nobody: refused at every site (ComBat: per batch)
        fed.combat("aml", ["age", "wbc"], where="age > 200")
    ActivityLog(activity).record(
        query_id="x", user="someone_else", analysis="describe", dataset="aml", where=None
    )
    body = await get(jp_fetch, "activity")
    assert body["user"] == "dr_test"
    queries = body["queries"]
    assert [q["analysis"] for q in queries] == ["combat", "kaplan_meier"]
    refused, km = queries
    assert refused["outcome"] == "refused" and refused["where"] == "age > 200"
    assert set(refused["sites"].values()) == {"refused"}
    assert "ledger" in refused["rules"]
    assert km["outcome"] in ("released", "suppressed")
    assert set(km["sites"]) == set(DEMO_SITES)
    assert refused["time"] >= km["time"]
    limited = await get(jp_fetch, "activity", limit="1")
    assert [q["analysis"] for q in limited["queries"]] == ["combat"]


async def test_activity_limit_is_checked(jp_fetch, activity):
    for bad in ("0", "many", "100000"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("fedhem", "api", "activity", params={"limit": bad})
        assert info.value.code == 400


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
async def test_every_endpoint_refuses_unauthenticated_requests(jp_fetch, name):
    # jp_fetch adds the server token; an empty Authorization header and no cookie is anonymous.
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedhem", "api", name, headers={"Authorization": ""})
    assert info.value.code == 403


async def test_a_wrong_token_is_refused(jp_fetch):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedhem", "api", "sites", headers={"Authorization": "token not-the-token"})
    assert info.value.code == 403


def test_every_handler_method_is_wrapped_by_authenticated():
    # tornado's @web.authenticated wraps the method; an unwrapped GET would be reachable anonymously.
    for name, cls in ENDPOINTS.items():
        for method in ("get", "post", "put", "patch", "delete"):
            fn = cls.__dict__.get(method)
            if fn is not None:
                assert hasattr(fn, "__wrapped__"), f"{name}.{method} is not @web.authenticated"
    registered = {c for c in vars(handlers).values() if isinstance(c, type)}
    api = {c for c in registered if issubclass(c, handlers._FedHemHandler)}
    assert api - {handlers._FedHemHandler} == set(ENDPOINTS.values())


async def test_base_url_is_respected(jp_fetch, jp_base_url):
    assert jp_base_url != "/"  # pytest-jupyter serves under a random prefix
    body = await get(jp_fetch, "sites")
    assert body["sites"]


async def test_no_federation(jp_fetch, monkeypatch):
    monkeypatch.setenv("FEDHEM_FEDERATION", "none")
    body = await get(jp_fetch, "sites")
    assert body == {"federation": None, "sites": []}


def test_view_builds_the_federation_once_and_records_nothing(monkeypatch, activity):
    calls = []
    real = fh.federation_from_env

    def counting(**options):
        calls.append(options)
        return real(**options)

    monkeypatch.setattr("fedhem_kernel.federation.federation_from_env", counting)
    view = FederationView()
    view.sites()
    view.catalog()
    view.policy()
    assert calls == [{"isolation": "process"}]  # once, with the sites in their own process
    assert not activity.exists()  # the server never runs queries, so it lists none


def test_the_server_holds_no_rows(monkeypatch, tmp_path):
    """The server asks the sites through the engine: they run in a site host process, and
    nothing reachable from its view of the federation is a site, a dataset or a row."""
    from test_boundary import reachable, rows_reachable

    from fedhem_kernel.demo.files import write_demo_federation

    config = write_demo_federation(tmp_path / "demo", seed=3)
    monkeypatch.setenv("FEDHEM_FEDERATION", str(config))
    view = FederationView()
    try:
        assert [s["name"] for s in view.sites()["sites"]] == DEMO_SITES
        assert "aml" in view.catalog("aml")["datasets"]
        assert len(view.policy()["sites"]) == 4
        assert rows_reachable(view) == []
        assert "SiteProcess" in {type(o).__name__ for o in reachable(view)}
    finally:
        view._federation.close()


async def test_a_federation_that_cannot_load_is_a_clear_503(jp_fetch, monkeypatch, tmp_path):
    config = tmp_path / "federation.toml"
    config.write_text('[sites.a]\nconfig = "a.toml"\n')
    (tmp_path / "a.toml").write_text(
        '[site]\nname = "a"\naudit_log = "blocker/audit.jsonl"\n[datasets.x]\npath = "x.csv"\n'
    )
    (tmp_path / "x.csv").write_text("age\n50\n")
    (tmp_path / "blocker").write_text("a file where a folder should be")  # audit dir: OSError
    monkeypatch.setenv("FEDHEM_FEDERATION", str(config))
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedhem", "api", "sites")
    assert info.value.code == 503
    assert "could not be loaded" in json.loads(info.value.response.body)["message"]


class _DenyFedHem:
    """An authorizer that refuses the ``fedhem`` resource and allows everything else."""

    def is_authorized(self, handler, user, action, resource):
        return resource != handlers.AUTH_RESOURCE


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
async def test_every_endpoint_asks_the_servers_authorizer(
    jp_fetch, jp_serverapp, monkeypatch, name
):
    monkeypatch.setitem(jp_serverapp.web_app.settings, "authorizer", _DenyFedHem())
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("fedhem", "api", name)
    assert info.value.code == 403
