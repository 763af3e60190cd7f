"""k-means and PCA widgets: the synced state holds released values only, and it renders.

Three blobs over three sites under the default policy (k = 5); site_c holds only 3 patients of the
third blob (a tiny cluster there). The figures are the result's own numbers: centres on PC1/PC2 are
``pca.transform(cluster_centers)``, circle sizes are ``cluster_sizes``, heatmap cells are
``(centre - mean) / scale``. A cluster a site held back shows as a suppressed cell, never a number.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from conftest import without_secure_sums
from test_widgets import widget_page

import fedhem_kernel as fh
from fedhem_kernel.analyses.kmeans import HELD, RELEASED
from fedhem_kernel.display import mimebundle
from fedhem_kernel.display.cluster_plot import plot_centers
from fedhem_kernel.display.cluster_state import center_points, profile_figure
from fedhem_kernel.display.state import SUPPRESSED
from fedhem_kernel.display.widgets import ResultTableWidget

K = 5
FEATURES = ["age", "wbc", "plt"]
CENTRES = np.array([[45.0, 5.0, 250.0], [65.0, 40.0, 120.0], [72.0, 12.0, 40.0]])
SPREAD = np.array([6.0, 4.0, 25.0])
# patients of each blob at each site: site_c has a tiny third blob
BLOBS = {"site_a": (50, 40, 40), "site_b": (40, 30, 30), "site_c": (30, 27, 3)}
INIT = CENTRES + np.array([3.0, -2.0, 10.0])


def blobs(seed: int, counts: tuple[int, ...]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [rng.normal(CENTRES[b], SPREAD, size=(n, 3)) for b, n in enumerate(counts)]
    return pd.DataFrame(np.vstack(rows).round(2), columns=FEATURES)


TABLES = {site: blobs(i, counts) for i, (site, counts) in enumerate(BLOBS.items())}


def federation(secure: bool = False) -> fh.Federation:
    """The sites; by default outside secure sums, so each releases its own clusters (the per-site
    table these tests show); ``secure=True``: pooled through secure sums."""
    datasets = {s: {"d": df} for s, df in TABLES.items()}
    if not secure:
        return without_secure_sums(datasets, fh.Policy())
    return fh.Federation.local(datasets, policy=fh.Policy())


@pytest.fixture(scope="module")
def results():
    with federation() as fed:
        km = fed.kmeans("d", FEATURES, 3, seed=0)
        raw = fed.kmeans("d", FEATURES, 3, init=INIT, standardize=False)
        pca = fed.pca("d", FEATURES, 2)
        pca1 = fed.pca("d", FEATURES, 1)
    return {"km": km, "raw": raw, "pca": pca, "pca1": pca1}


def strict_json(state: dict) -> str:
    return json.dumps(state, allow_nan=False)


def synced(widget) -> dict:
    return {k: v for k, v in widget.get_state().items() if not k.startswith("_") or k == "_kind"}


def column(table: dict, name: str) -> list:
    j = table["columns"].index(name)
    return [r["values"][j] for r in table["rows"]]


def by_site_cells(table: dict) -> dict[tuple[str, str], tuple[object, str, str]]:
    """(site, cluster) -> (size, its flag, status)."""
    size, status = table["columns"].index("size"), table["columns"].index("status")
    return {
        tuple(r["index"]): (r["values"][size], r["flags"][size], r["values"][status])
        for r in table["rows"]
    }


# -- state -----------------------------------------------------------------------------------------
def test_kmeans_state_is_the_result_and_every_released_count_is_zero_or_at_least_k(results):
    km = results["km"]
    state = synced(km.widget())
    strict_json(state)
    summary, per_site = state["tables"]
    assert [r["index"] for r in summary["rows"]] == [[c] for c in km.cluster_centers.index]
    assert column(summary, "size") == km.cluster_sizes.tolist()
    for f in FEATURES:
        np.testing.assert_allclose(column(summary, f), km.cluster_centers[f], rtol=1e-15)
    cells = by_site_cells(per_site)
    assert set(cells) == {(s, c) for s in TABLES for c in km.cluster_centers.index}
    for (site, cluster), (size, flag, status) in cells.items():
        if status == RELEASED:
            assert flag == "" and (size == 0 or size >= K), (site, cluster)
        else:
            assert (size, flag) == (None, SUPPRESSED)
    # the tiny blob at site_c (3 patients) is never a released count of its own
    assert all(
        size != BLOBS["site_c"][2] for (s, _), (size, _, _) in cells.items() if s == "site_c"
    )
    # the figure carries pooled values only: no site is named in it
    figure = json.dumps(state["figure"])
    assert not any(site in figure for site in TABLES)
    assert state["footnote"].startswith("Centres in original units; inertia")
    assert "in pooled SDs" in state["figure"]["label"]
    assert state["title"].startswith("k-means on 'd'")
    assert [o["site"] for o in state["privacy"]["outcomes"]] == sorted(TABLES)


def test_heatmap_cells_are_distances_from_the_pooled_mean_in_sds(results):
    km = results["km"]
    fig = km.widget().figure
    assert fig["kind"] == "heatmap" and fig["scale"] == "sd"
    assert fig["rows"] == list(km.cluster_centers.index) and fig["columns"] == FEATURES
    expected = (km.cluster_centers - km.mean) / km.scale
    np.testing.assert_allclose(fig["z"], expected.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fig["values"], km.cluster_centers.to_numpy(), rtol=1e-15)
    np.testing.assert_allclose(fig["means"], km.mean.to_numpy(), rtol=1e-15)
    assert fig["sizes"] == km.cluster_sizes.tolist()
    assert fig["limit"] == pytest.approx(np.abs(expected.to_numpy()).max())
    # pooled SDs from the sites' moments: the population SD of all rows
    pooled = pd.concat(TABLES.values())
    np.testing.assert_allclose(km.scale, pooled.std(ddof=0), rtol=1e-12)


def test_heatmap_without_standardisation_is_relative_within_each_feature(results):
    raw = results["raw"]
    assert (raw.scale == 1.0).all()  # no SDs were computed: colours cannot be in SD units
    fig = profile_figure(raw)
    assert fig["scale"] == "relative" and "not standardised" in fig["label"]
    dev = (raw.cluster_centers - raw.mean).to_numpy()
    z = np.asarray(fig["z"])
    np.testing.assert_allclose(z, dev / np.abs(dev).max(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.abs(z).max(axis=0), 1.0)
    assert fig["limit"] == 1.0
    assert "compare colours within a column only" in raw.widget().figure["label"]


def test_centres_on_the_components_are_pca_transform_and_sized_by_released_size(results):
    km, pca = results["km"], results["pca"]
    fig = km.widget(pca=pca).figure
    assert fig == pca.widget(kmeans=km).figure  # the same figure from either result
    assert fig["kind"] == "scatter" and fig["mode"] == "centers" and not fig["arrows"]
    scores = pca.transform(km.cluster_centers)
    assert [p["label"] for p in fig["points"]] == list(scores.index)
    np.testing.assert_allclose([p["x"] for p in fig["points"]], scores["PC1"], rtol=1e-15)
    np.testing.assert_allclose([p["y"] for p in fig["points"]], scores["PC2"], rtol=1e-15)
    sizes = [p["size"] for p in fig["points"]]
    assert sizes == km.cluster_sizes.tolist()
    np.testing.assert_allclose([p["area"] for p in fig["points"]], np.array(sizes) / max(sizes))
    ratio = pca.explained_variance_ratio
    assert fig["x_label"] == f"PC1 ({ratio['PC1']:.0%} of variance)"
    assert [c["ratio"] for c in fig["scree"]] == ratio.tolist()
    assert fig["notes"] == []
    # the matplotlib plot draws the same points, with the same axis labels
    ax = plot_centers(pca, km)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), scores[["PC1", "PC2"]].to_numpy())
    assert (ax.get_xlabel(), ax.get_ylabel()) == (fig["x_label"], fig["y_label"])
    areas = ax.collections[0].get_sizes()
    np.testing.assert_allclose(
        areas / areas.max(), np.maximum(30 / 900, np.array(sizes) / max(sizes))
    )
    strict_json(fig)


def test_pca_widget_draws_the_loadings_and_a_scree_strip(results):
    pca = results["pca"]
    w = pca.widget()
    assert isinstance(w, ResultTableWidget)
    state = synced(w)
    strict_json(state)
    fig = state["figure"]
    assert fig["mode"] == "loadings" and fig["arrows"] and fig["unit_circle"]
    assert [p["label"] for p in fig["points"]] == FEATURES
    np.testing.assert_allclose([p["x"] for p in fig["points"]], pca.components.loc["PC1"])
    np.testing.assert_allclose([p["y"] for p in fig["points"]], pca.components.loc["PC2"])
    (table,) = state["tables"]
    assert column(table, "explained_variance_ratio") == pca.explained_variance_ratio.tolist()
    assert state["footnote"] == "From the pooled covariance of standardised features " + (
        "(correlation). Signs as scikit-learn (largest loading positive)."
    )
    assert "data:image/png;base64" in pca._repr_html_()  # the loadings plot as a PNG


def test_one_component_has_no_two_dimensional_figure(results):
    pca1, km = results["pca1"], results["km"]
    assert pca1.widget().figure == {}
    assert "data:image/png" not in pca1._repr_html_()
    for call in (lambda: km.widget(pca=pca1), lambda: pca1.plot_centers(km)):
        with pytest.raises(fh.ParameterError, match="n_components=2 or more") as err:
            call()
        assert err.value.dataset == "d"
    with pytest.raises(fh.ParameterError, match="different positions"):
        center_points(results["pca"], km, (0, 0))


def test_a_pca_lacking_a_feature_of_the_clustering_is_refused(results):
    with federation() as fed:
        pca = fed.pca("d", ["age", "wbc", "plt"], 2)
        km = fed.kmeans("d", ["age", "wbc"], 2)
    with pytest.raises(fh.ParameterError, match="lack a feature") as err:
        km.widget(pca=pca)
    assert err.value.column == "plt"


def test_a_pooled_kmeans_widget_shows_the_totals_and_no_site_table():
    with federation(secure=True) as fed:
        km = fed.kmeans("d", FEATURES, 3, init=INIT, standardize=False)
    state = synced(km.widget())
    strict_json(state)
    assert [t["caption"] for t in state["tables"]] == [
        "centres (original units) and released sizes"
    ]
    assert column(state["tables"][0], "size") == km.cluster_sizes.tolist()
    assert sum(km.cluster_sizes) == sum(len(df) for df in TABLES.values())
    assert "<caption>per site" not in km._repr_html_() and ">per site<" not in km._repr_html_()


def test_a_cluster_held_at_a_site_is_suppressed_in_the_widget(releases, monkeypatch):
    """A site that holds back a cluster (FedHem's own sites no longer need to: their clusters are
    unions of micro-clusters inside the release ledger's atoms; a site of another make may):
    its size there is a suppressed cell, and the sizes drawn leave it out."""
    import fedhem_kernel.analyses.kmeans.site as kmeans_site

    gate = kmeans_site.gate_clusters

    def holding(data, fm, labels, counts, atoms=None):
        status = gate(data, fm, labels, counts, atoms)
        if data.site == "site_a":
            status[1] = HELD
        return status

    monkeypatch.setattr(kmeans_site, "gate_clusters", holding)
    with federation() as fed:
        again = fed.kmeans("d", FEATURES, 3, init=INIT, standardize=False)
        pca = fed.pca("d", FEATURES, 2, standardize=False)
    status = again.by_site.set_index(["site", "cluster"])["status"]
    assert status["site_a", "2"] == HELD
    held = [c for c in again.cluster_centers.index if status["site_a", c] == HELD]
    state = synced(again.widget(pca=pca))
    strict_json(state)
    cells = by_site_cells(state["tables"][1])
    for c in held:
        assert cells["site_a", c] == (None, SUPPRESSED, HELD)
    # the drawn sizes are the pooled released sizes, without site_a's held clusters
    drawn = {p["label"]: p["size"] for p in state["figure"]["points"]}
    assert drawn == again.cluster_sizes.to_dict()
    released_at_others = again.by_site[again.by_site["site"] != "site_a"]
    for c in held:
        others = released_at_others.loc[released_at_others["cluster"] == c, "size"].sum()
        assert drawn[c] == others
    # what the widget shows is what crossed from the sites, nothing more
    final = [
        r.payload for r in releases if r.site == "site_a" and r.payload and "status" in r.payload
    ]
    assert [list(p["status"]) for p in final][-1].count(HELD) == len(held)


# -- display ---------------------------------------------------------------------------------------
def test_mimebundle_outside_and_inside_a_kernel(results, monkeypatch):
    km, pca = results["km"], results["pca"]
    for result in (km, pca):
        bundle = result._repr_mimebundle_()
        assert set(bundle) == {"text/html", "text/plain"}
        assert "Privacy report" in bundle["text/html"] and bundle["text/plain"] == repr(result)
    monkeypatch.setattr(mimebundle, "in_kernel", lambda: True)
    for result in (km, pca):
        bundle = result._repr_mimebundle_()
        view = bundle[mimebundle.WIDGET_MIME]
        assert view["version_major"] == 2 and view["model_id"]
        assert "Privacy report" in bundle["text/html"]
        no_widget = result._repr_mimebundle_(exclude={mimebundle.WIDGET_MIME})
        assert mimebundle.WIDGET_MIME not in no_widget


@pytest.mark.browser
def test_cluster_widgets_render_in_a_browser(results, tmp_path):
    km, raw, pca = results["km"], results["raw"], results["pca"]
    k, p = km.n_clusters, len(FEATURES)
    states = {
        "heat": synced(km.widget()),
        "centres": synced(km.widget(pca=pca)),
        "loadings": synced(pca.widget()),
        "relative": synced(raw.widget()),
    }
    with widget_page(states) as (page, errors):
        assert errors == []
        # heatmap: k x p cells, the hover text gives the centre in original units
        heat = page.locator("#heat.fedhem-table")
        cells = heat.locator("svg.fedhem-heatmap rect.fedhem-heatmap-cell")
        assert cells.count() == k * p
        first = cells.first
        assert (first.get_attribute("data-row"), first.get_attribute("data-column")) == (
            "1",
            FEATURES[0],
        )
        tip = first.locator("title").text_content()
        centre = float(km.cluster_centers.iloc[0, 0])
        z = float((km.cluster_centers.iloc[0, 0] - km.mean.iloc[0]) / km.scale.iloc[0])
        assert tip.startswith(f"cluster 1, {FEATURES[0]}: centre {float(f'{centre:.4g}'):g}")
        assert f"{float(f'{z:.4g}'):g} SD from the pooled mean" in tip
        fills = cells.evaluate_all("cs => cs.map(c => c.getAttribute('fill'))")
        assert len(set(fills)) > 1
        assert heat.locator(".fedhem-privacy").count() == 1
        assert heat.locator("details.fedhem-more").count() == 1  # per-site table, collapsed
        rel = page.locator("#relative svg.fedhem-heatmap rect.fedhem-heatmap-cell")
        assert "of the largest distance" in rel.first.locator("title").text_content()
        # centres: k circles (no patient points), labelled, sized by released size
        pts = page.locator("#centres svg.fedhem-scatter g.fedhem-scatter-point")
        assert pts.count() == k
        assert sorted(pts.locator("text").all_text_contents()) == list(km.cluster_centers.index)
        radii = {
            g.get_attribute("data-label"): float(g.locator("circle").get_attribute("r"))
            for g in pts.all()
        }
        sizes = km.cluster_sizes
        np.testing.assert_allclose(
            [radii[c] ** 2 for c in sizes.index],
            28**2 * sizes.to_numpy() / sizes.max(),
            rtol=1e-6,
        )
        tip = pts.first.locator("title").text_content()
        assert "patients released" in tip and "PC1" in tip and "PC2" in tip
        assert page.locator("#centres .fedhem-scree-bar").count() == 2
        assert "PC1 (" in page.locator("#centres svg.fedhem-scatter").inner_html()
        # loadings: one arrow per feature, named
        arrows = page.locator("#loadings g.fedhem-scatter-point")
        assert arrows.count() == p
        assert arrows.locator("line.fedhem-scatter-arrow").count() == p
        assert sorted(arrows.locator("text").all_text_contents()) == sorted(FEATURES)
        assert "loading" in arrows.first.locator("title").text_content()
        page.screenshot(path=str(tmp_path / "cluster_widgets.png"), full_page=True)
        assert errors == []
