"""Secure sums: the totals equal the plain sums, dropouts, key sessions, encoding, config.

The attacks (a coordinator that substitutes keys, reuses sums, splits the sites) are in
``tests/disclosure/test_secure_sum_attacks.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from secure_helpers import secure_sites

from fedhem_kernel import node
from fedhem_kernel.errors import DisclosureError, SchemaError
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.secure_sum import (
    COUNT_LIMIT,
    REAL_LIMIT,
    SecureSumError,
    add_up,
    decode,
    decode_fields,
    encode,
    encode_fields,
    mask,
    pair_seed,
)
from fedhem_kernel.site.config import SiteConfig
from fedhem_kernel.site.identity import SiteIdentity


# -- encoding ---------------------------------------------------------------------------------
def test_reals_round_trip_to_their_fixed_point_resolution():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 1, 1000),
            rng.normal(0, 1e9, 1000),
            -(10.0 ** rng.uniform(-12, 22, 1000)),
            10.0 ** rng.uniform(-12, 22, 1000),
            [0.0, -0.0, 2.0**-50, -(2.0**-50), REAL_LIMIT * 0.999, -REAL_LIMIT * 0.999],
        ]
    )
    back = decode("real", encode("real", x), x.shape)
    # each value rounds to 2^-50 at most; above 2^3 the encoding is the float itself
    assert np.all(np.abs(back - x) <= np.maximum(2.0**-51, np.abs(x) * 2.0**-52))
    big = np.abs(x) >= 8
    assert np.array_equal(back[big], x[big])


def test_counts_round_trip_exactly_and_sums_stay_exact():
    rng = np.random.default_rng(1)
    parts = [rng.integers(-(2**40), 2**40, 500) for _ in range(7)]
    total = add_up([encode("count", p) for p in parts])
    assert np.array_equal(decode("count", total, (500,)), np.sum(parts, axis=0))


def test_a_sum_of_reals_over_sites_is_the_sum_of_the_encoded_values():
    rng = np.random.default_rng(2)
    parts = [rng.normal(0, 1e6, 300) for _ in range(9)]
    total = decode("real", add_up([encode("real", p) for p in parts]), (300,))
    exact = np.array([math.fsum(column) for column in np.transpose(parts)])
    # values this large encode exactly: the total is the exact sum, rounded once
    assert np.all(np.abs(total - exact) <= np.spacing(np.abs(exact)))


@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [
        ("real", np.nan, "not finite"),
        ("real", np.inf, "not finite"),
        ("real", REAL_LIMIT, "in size"),
        ("count", 1.5, "whole number"),
        ("count", float(COUNT_LIMIT), "whole number"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_without_quoting_it(kind, value, words):
    with pytest.raises(SecureSumError, match=words) as info:
        encode(kind, [1.0, value])
    assert repr(value) not in str(info.value)


def test_fields_travel_in_name_order_and_decode_by_name():
    fields = {"b": ("count", np.arange(6).reshape(2, 3)), "a": ("real", np.array([0.5, -2.25]))}
    layout, words = encode_fields(fields)
    assert [f.name for f in layout] == ["a", "b"]
    assert words.size == 2 * 3 + 6
    out = decode_fields(layout, words)
    assert out["b"].shape == (2, 3) and np.array_equal(out["b"], fields["b"][1])
    assert np.array_equal(out["a"], fields["a"][1])


def test_pairwise_masks_cancel_in_the_total_and_only_there():
    words = {s: encode("count", np.full(64, i)) for i, s in enumerate("abc")}
    secrets = {frozenset(p): bytes([i]) * 32 for i, p in enumerate(["ab", "ac", "bc"])}
    masked = {
        s: mask(
            words[s],
            s,
            {o: pair_seed(secrets[frozenset(s + o)], "0" * 32, 1, s, o) for o in "abc" if o != s},
        )
        for s in "abc"
    }
    assert np.array_equal(decode("count", add_up(list(masked.values())), (64,)), np.full(64, 3))
    for pair in ("ab", "ac", "bc"):
        partial = decode("count", add_up([masked[s] for s in pair]), (64,))
        assert not np.array_equal(partial, sum(np.full(64, "abc".index(s)) for s in pair))
    seed = pair_seed(b"\x01" * 32, "0" * 32, 1, "a", "b")
    assert seed == pair_seed(b"\x01" * 32, "0" * 32, 1, "b", "a")
    assert seed != pair_seed(b"\x01" * 32, "0" * 32, 2, "a", "b")


# -- the engine path --------------------------------------------------------------------------
def test_a_secure_sum_equals_the_plain_sum_over_five_sites():
    fed = secure_sites(5)
    q = fed.query()
    total = q.ask_sum("sum_test", {"vector": True})
    plain = fed.plain()
    assert total.sites == tuple(fed.frames)
    assert int(total.totals["n"]) == plain["n"]
    assert total.totals["sx"] == pytest.approx(plain["sx"], rel=1e-13)
    assert total.totals["sxx"] == pytest.approx(plain["sxx"], rel=1e-13)
    hist = sum(
        np.histogram(df["x"], bins=np.linspace(-100, 200, 31))[0] for df in fed.frames.values()
    )
    assert np.array_equal(total.totals["hist"], hist)
    assert total.shared == {s: {"levels": ["a", "b"]} for s in fed.frames}
    assert all(o.status == "released" for o in q.report().outcomes)
    assert any("secure sum over 5 sites" in n for n in q.report().notes)


def test_what_the_coordinator_receives_is_masked():
    """The wire carries each site's masked words: not its values, and not the same words twice."""
    fed = secure_sites(3)
    seen = []
    send = fed.coordinator.send

    def spy(request, sites=None):
        replies = send(request, sites)
        seen.append({s: r.payload for s, r in replies.items()})
        return replies

    fed.coordinator.send = spy
    fed.query().ask_sum("sum_test", {})
    fed.query().ask_sum("sum_test", {})
    sums = [r for r in seen if all("secure" in (p or {}) for p in r.values())]
    assert len(sums) == 2
    for site, df in fed.frames.items():
        x = df["x"].to_numpy()
        _, own = encode_fields(
            {"n": ("count", len(x)), "sx": ("real", x.sum()), "sxx": ("real", (x**2).sum())}
        )
        first, second = (r[site]["secure"]["masked"] for r in sums)
        assert not np.array_equal(first, own)
        assert not np.array_equal(first, second)
        assert set(sums[0][site]) == {"levels", "secure"}  # nothing but the shared fields besides


def test_a_site_that_drops_out_is_left_out_and_the_sum_asked_again():
    fed = secure_sites(5, policy=Policy(secure_sum_min_sites=3))  # sites allowing a majority
    fed.query().ask_sum("sum_test", {})  # keys are in the session
    fed.transport.down = {fed.node_of["site3"]}
    q = fed.query()
    total = q.ask_sum("sum_test", {})
    left = [s for s in fed.frames if s != "site3"]
    assert total.sites == tuple(left)
    assert total.totals["sx"] == pytest.approx(fed.plain(left)["sx"], rel=1e-13)
    report = q.report()
    assert {o.site: o.status for o in report.outcomes}["site3"] == "error"
    assert any("asked again of the 4 sites" in n for n in report.notes)


def test_a_site_down_from_the_start_gives_no_key_and_is_left_out():
    fed = secure_sites(4, policy=Policy(secure_sum_min_sites=3))
    fed.transport.down = {fed.node_of["site0"]}
    total = fed.query().ask_sum("sum_test", {})
    assert total.sites == ("site1", "site2", "site3")


def test_fewer_sites_than_a_majority_of_the_roster_are_refused():
    fed = secure_sites(5, policy=Policy(secure_sum_min_sites=3))
    fed.transport.down = {fed.node_of[s] for s in ("site0", "site1", "site2")}
    q = fed.query()
    with pytest.raises(DisclosureError) as info:
        q.ask_sum("sum_test", {})
    assert "secure_sum_sites" in str(info.value)
    assert "at least 3 sites" in str(info.value)


def test_a_site_policy_can_ask_for_more_sites_but_not_fewer():
    fed = secure_sites(4, policy=Policy(secure_sum_min_sites=4))
    fed.transport.down = {fed.node_of["site0"]}
    with pytest.raises(DisclosureError, match="at least 4 sites"):
        fed.query().ask_sum("sum_test", {})
    assert (
        secure_sites(4, policy=Policy(secure_sum_min_sites=1)).executors["site0"].secure.min_sites
        == 3
    )  # a majority of 4
    # by default every site of the roster: a sum without one of them is refused
    fed = secure_sites(4)
    assert fed.executors["site0"].secure.min_sites == 4
    fed.transport.down = {fed.node_of["site0"]}
    with pytest.raises(DisclosureError, match="at least 4 sites"):
        fed.query().ask_sum("sum_test", {})


def test_a_site_that_restarted_is_asked_for_a_new_key():
    fed = secure_sites(3)
    fed.query().ask_sum("sum_test", {})
    party = fed.executors["site1"].secure
    party._sessions.clear()  # as after a restart: the session's key is gone
    total = fed.query().ask_sum("sum_test", {})
    assert total.sites == tuple(fed.frames)
    assert total.totals["sx"] == pytest.approx(fed.plain()["sx"], rel=1e-13)


def test_each_secure_sum_is_in_the_sites_audit_log():
    fed = secure_sites(3)
    fed.query().ask_sum("sum_test", {})
    entries = [e for e in fed.executors["site2"].audit.entries() if e["analysis"] == "sum_test"]
    assert entries[-1]["parameters"]["secure_sum"] == {
        "sum": 1,
        "sites": ["site0", "site1", "site2"],
    }


def test_a_step_without_a_secure_form_is_refused():
    fed = secure_sites(3)
    with pytest.raises(Exception, match="has no secure form"):
        fed.query().ask_sum("plain_test", {})


# -- identity keys from a site's config -------------------------------------------------------
def _write_key(path, identity):
    path.write_bytes(
        identity.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )


def test_a_site_config_names_its_identity_key_and_its_peers(tmp_path):
    me, peer = SiteIdentity.generate("north"), SiteIdentity.generate("south")
    _write_key(tmp_path / "north.key", me)
    (tmp_path / "x.csv").write_text("x\n1\n2\n3\n4\n5\n6\n")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "north"\nidentity_key = "north.key"\n'
        f'[peers]\nsouth = "{peer.public_text}"\n'
        '[datasets.d]\npath = "x.csv"\n'
    )
    ex = node.executor(SiteConfig.from_toml(tmp_path / "site.toml"))
    assert ex.secure is not None
    assert set(ex.secure.roster) == {"north", "south"}
    assert ex.secure.roster["south"] == peer.public_key
    assert ex.secure.min_sites == 2


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('[peers]\nsouth = "ssh-rsa AAAA"\n', "Ed25519 public key"),
        ('[peers]\nnorth = "ssh-ed25519 AAAA"\n', "not this one"),
        ("[peers]\nsouth = 5\n", "identity keys"),
    ],
)
def test_a_bad_roster_is_a_schema_error_naming_the_site(tmp_path, content, words):
    (tmp_path / "x.csv").write_text("x\n1\n")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "north"\n' + content + '[datasets.d]\npath = "x.csv"\n'
    )
    with pytest.raises(SchemaError, match=words) as info:
        me = SiteIdentity.generate("north")
        node.executor(SiteConfig.from_toml(tmp_path / "site.toml"), identity=me)
    assert info.value.site in ("north", "south")


def test_a_bad_identity_key_file_is_a_schema_error(tmp_path):
    (tmp_path / "bad.key").write_text("not a key")
    (tmp_path / "x.csv").write_text("x\n1\n")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "north"\nidentity_key = "bad.key"\n[datasets.d]\npath = "x.csv"\n'
    )
    with pytest.raises(SchemaError, match="Ed25519 private key") as info:
        node.executor(SiteConfig.from_toml(tmp_path / "site.toml"))
    assert info.value.site == "north"
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "north"\nidentity_key = "gone.key"\n[datasets.d]\npath = "x.csv"\n'
    )
    with pytest.raises(SchemaError, match="not found"):
        node.executor(SiteConfig.from_toml(tmp_path / "site.toml"))


def test_embedded_sites_know_each_other(tmp_path):
    from sites import sites_of

    import fedhem_kernel as fh

    fed = fh.Federation.demo()
    executors = sites_of(fed)
    rosters = {name: set(ex.secure.roster) for name, ex in executors.items()}
    assert all(r == set(executors) for r in rosters.values())


# -- sealed totals ----------------------------------------------------------------------------
def _open(fed, site, total, params=None):
    from fedhem_kernel.protocol.secure_sum import request_binding

    binding = request_binding("sealed_test", "d", None, params or {})
    return fed.executors[site].secure.verify_total(total.evidence, binding, total.sites)


def test_a_sealed_total_is_the_sites_alone_and_opens_to_the_plain_sum():
    fed = secure_sites(4)
    total = fed.query().ask_sum("sealed_test", {})
    plain = fed.plain()
    assert set(total.totals) == {"n", "sxx"}  # the coordinator's total has no sealed field
    assert total.totals["sxx"] == pytest.approx(plain["sxx"], rel=1e-13)
    replies = total.evidence["replies"]
    assert all(len(r["envelopes"]) == 3 for r in replies.values())
    # the words it adds up decode to noise
    from fedhem_kernel.protocol.secure_sum import parse_layout

    layout = parse_layout(next(iter(replies.values()))["layout"])
    summed = decode_fields(layout, add_up([r["masked"] for r in replies.values()]), sealed=True)
    assert abs(float(summed["sx"]) - plain["sx"]) > 1e6
    # every site opens it, to the plain sum
    for site in fed.frames:
        opened = _open(fed, site, total)
        assert float(opened["sx"]) == pytest.approx(plain["sx"], rel=1e-13)
        assert int(opened["n"]) == plain["n"]


def test_a_sealed_total_does_not_open_with_envelopes_moved_or_removed():
    import copy

    fed = secure_sites(3)
    total = fed.query().ask_sum("sealed_test", {})
    a, b, c = sorted(total.evidence["replies"])
    moved = copy.deepcopy(total)
    # a's envelope for b, readdressed to c: signed by a for b, so the signature fails
    moved.evidence["replies"][a]["envelopes"][c] = moved.evidence["replies"][a]["envelopes"][b]
    with pytest.raises(DisclosureError, match="not signed"):
        _open(fed, c, moved)
    removed = copy.deepcopy(total)
    del removed.evidence["replies"][a]["envelopes"][c]
    with pytest.raises(DisclosureError):
        _open(fed, c, removed)
    # a coordinator's own envelope (it holds no pair key) cannot be made to verify either
    from fedhem_kernel.protocol.secure_sum import b64

    forged = copy.deepcopy(total)
    forged.evidence["replies"][a]["envelopes"][c] = b64(bytes(60))
    with pytest.raises(DisclosureError):
        _open(fed, c, forged)
    assert float(_open(fed, c, total)["sx"]) == pytest.approx(fed.plain()["sx"], rel=1e-13)


def test_a_site_that_restarted_cannot_open_an_earlier_sealed_total():
    fed = secure_sites(3)
    total = fed.query().ask_sum("sealed_test", {})
    site = sorted(fed.frames)[0]
    fed.executors[site].secure._sessions.clear()  # what a restart forgets
    with pytest.raises(DisclosureError, match="restarted"):
        _open(fed, site, total)
