"""Attacks on secure sums by a coordinator that writes its own site messages.

The researcher runs the coordinator: it forwards the key bundles and numbers the sums, so it can
substitute keys, replay bundles, reuse a sum's number, split the sites into different views, or
ask a sum of too few sites. Each attack is first shown to work against a site with the check turned
off (so the test can fail), then refused by the real site.
"""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import generate_key_pairs
from secure_helpers import secure_sites

from fedhem_kernel.errors import DisclosureError, ParameterError, error_from_dict
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.messages import KEYS_STEP, SiteRequest
from fedhem_kernel.protocol.secure_sum import (
    add_up,
    b64,
    bundle_message,
    decode_fields,
    encode_fields,
    pair_seed,
    parse_layout,
    prg_words,
    public_key_bytes,
    public_key_from_bytes,
    unb64,
)
from fedhem_kernel.site.identity import SiteIdentity
from fedhem_kernel.site.secure_sum import SUM_WINDOW


def keys(ex, session):
    reply = ex.handle(SiteRequest(KEYS_STEP, None, {"session": session}, who="mallory"))
    assert reply.status == "released", reply.error
    return reply.payload["bundle"]


def ask(ex, session, number, bundles, where=None):
    secure = {"session": session, "sum": number, "bundles": bundles}
    return ex.handle(SiteRequest("sum_test", "d", {}, where, "mallory", "q", secure))


def refused(reply, cls=DisclosureError):
    assert reply.status in ("refused", "error") and reply.payload is None
    err = error_from_dict(reply.error)
    assert isinstance(err, cls), err
    assert "internal error" not in err.reason
    return err


def masked_words(reply):
    return reply.payload["secure"]["masked"]


def own_values(df):
    x = df["x"].to_numpy()
    return {"n": len(x), "sx": x.sum(), "sxx": (x**2).sum()}


def forged_bundle(site, session, signer=None):
    """A bundle naming ``site`` with a key the attacker holds, signed by ``signer`` (the
    attacker's own identity by default)."""
    private, public = generate_key_pairs()
    key = b64(public_key_bytes(public))
    signer = signer or SiteIdentity.generate(site)
    signature = b64(signer.sign(bundle_message(site, session, key)))
    return private, {"site": site, "session": session, "key": key, "signature": signature}


def unmask(reply, victim_bundle, forged, session, number, victim):
    """What the attacker reads from the victim's reply when it holds every other key of the sum."""
    victim_key = public_key_from_bytes(unb64(victim_bundle["key"]))
    words = masked_words(reply).copy()
    for peer, private in forged.items():
        seed = pair_seed(generate_shared_key(private, victim_key), session, number, victim, peer)
        stream = prg_words(seed, words.size)
        words = words - stream if victim < peer else words + stream
    layout = parse_layout(reply.payload["secure"]["layout"])
    return decode_fields(layout, words)


# -- key substitution -----------------------------------------------------------------------
def test_substituted_keys_unmask_a_site_that_does_not_check_signatures(monkeypatch):
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    session = uuid.uuid4().hex
    own = keys(victim, session)
    forged = {}
    bundles = [own]
    for peer in ("site1", "site2"):
        private, bundle = forged_bundle(peer, session)
        forged[peer] = private
        bundles.append(bundle)
    monkeypatch.setattr(victim.secure.roster, "verify", lambda *a: True)  # the check, off
    reply = ask(victim, session, 1, bundles)
    got = unmask(reply, own, forged, session, 1, "site0")
    want = own_values(fed.frames["site0"])
    assert int(got["n"]) == want["n"] and got["sx"] == pytest.approx(want["sx"], rel=1e-12)


def test_substituted_keys_are_refused():
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    session = uuid.uuid4().hex
    own = keys(victim, session)
    _, forged = forged_bundle("site1", session)
    real2 = keys(fed.executors["site2"], session)
    err = refused(ask(victim, session, 1, [own, forged, real2]))
    assert err.rule == "secure_sum" and "not signed by that site's identity key" in err.reason


def test_a_bundle_signed_by_another_site_is_refused():
    """site2 (colluding) signs a key in site1's name: the message names the site it is for."""
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    session = uuid.uuid4().hex
    own = keys(victim, session)
    _, forged = forged_bundle("site1", session, signer=fed.identities["site2"])
    real2 = keys(fed.executors["site2"], session)
    assert refused(ask(victim, session, 1, [own, forged, real2])).rule == "secure_sum"


def test_a_bundle_of_another_session_is_refused():
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    stale = keys(fed.executors["site1"], old)
    own = keys(victim, new)
    real2 = keys(fed.executors["site2"], new)
    refused(ask(victim, new, 1, [own, stale, real2]))
    relabelled = {**stale, "session": new}  # the signature covers the session
    refused(ask(victim, new, 1, [own, relabelled, real2]))


def test_a_key_not_on_the_curve_signed_by_a_peer_is_a_clean_error():
    fed = secure_sites(3, policy=Policy(secure_sum_min_sites=2))  # sums over two sites allowed
    victim = fed.executors["site0"]
    session = uuid.uuid4().hex
    own = keys(victim, session)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    for number, key in enumerate((b64(b"junk"), b64(public_key_bytes(other))), start=1):
        signature = b64(fed.identities["site1"].sign(bundle_message("site1", session, key)))
        bundle = {"site": "site1", "session": session, "key": key, "signature": signature}
        err = refused(ask(victim, session, number, [own, bundle]), ParameterError)
        assert "site1" in err.reason


def test_a_sum_without_the_sites_own_key_is_refused():
    fed = secure_sites(3)
    session = uuid.uuid4().hex
    bundles = [keys(fed.executors[s], session) for s in ("site1", "site2")]
    keys(fed.executors["site0"], session)
    err = refused(ask(fed.executors["site0"], session, 1, bundles))
    assert "own key" in err.reason


# -- sum numbers ----------------------------------------------------------------------------
def _session(fed, sites=("site0", "site1", "site2")):
    session = uuid.uuid4().hex
    return session, [keys(fed.executors[s], session) for s in sites]


def test_a_reused_sum_number_would_difference_two_cohorts_and_is_refused(monkeypatch):
    fed = secure_sites(3, policy=Policy(ledger=False))
    victim = fed.executors["site0"]
    session, bundles = _session(fed)
    x = fed.frames["site0"]["x"].to_numpy()
    cut = float(np.sort(x)[-1])
    # with the check off: the same masks twice, so the difference of the replies is the
    # difference of the values (here one patient's exact value)
    monkeypatch.setattr(type(victim.secure._sessions[session]), "claim", lambda self, n: True)
    first = masked_words(ask(victim, session, 7, bundles))
    second = masked_words(ask(victim, session, 7, bundles, where=f"x < {cut}"))
    layout, _ = encode_fields({"n": ("count", 0), "sx": ("real", 0.0), "sxx": ("real", 0.0)})
    diff = decode_fields(layout, first - second)
    assert int(diff["n"]) == 1 and diff["sx"] == pytest.approx(cut, rel=1e-12)
    monkeypatch.undo()
    ask(victim, session, 8, bundles)
    err = refused(ask(victim, session, 8, bundles, where=f"x < {cut}"))
    assert "used before" in err.reason


def test_sum_numbers_older_than_the_window_count_as_used():
    fed = secure_sites(3)
    party = fed.executors["site0"].secure
    session, _ = _session(fed)
    state = party._sessions[session]
    assert all(state.claim(n) for n in range(1, SUM_WINDOW + 10))
    assert not state.claim(3) and not state.claim(SUM_WINDOW + 5)
    assert state.claim(SUM_WINDOW + 10) and len(state.used) <= SUM_WINDOW


# -- who takes part -------------------------------------------------------------------------
def test_a_sum_of_one_site_is_refused():
    fed = secure_sites(3)
    session, bundles = _session(fed, ("site0",))
    err = refused(ask(fed.executors["site0"], session, 1, bundles))
    assert err.rule == "secure_sum_sites"


def test_a_site_named_twice_is_refused():
    fed = secure_sites(3)
    session, bundles = _session(fed)
    refused(ask(fed.executors["site0"], session, 1, [*bundles, bundles[1]]), ParameterError)


def test_split_views_reveal_no_subset_of_the_values():
    """site0 is told the sum is {site0, site1}, the others {site0, site1, site2}: no set of the
    replies adds up to the sum of the values it covers (sites that allow sums over a majority)."""
    fed = secure_sites(3, policy=Policy(secure_sum_min_sites=2))
    session, bundles = _session(fed)
    replies = {
        "site0": ask(fed.executors["site0"], session, 1, bundles[:2]),
        "site1": ask(fed.executors["site1"], session, 1, bundles),
        "site2": ask(fed.executors["site2"], session, 1, bundles),
    }
    layout = parse_layout(replies["site0"].payload["secure"]["layout"])
    for size in (1, 2, 3):
        for subset in itertools.combinations(replies, size):
            got = decode_fields(layout, add_up([masked_words(replies[s]) for s in subset]))
            want = sum(len(fed.frames[s]) for s in subset)
            assert int(got["n"]) != want, subset


def test_a_policy_that_asks_for_every_site_refuses_subset_sums():
    """Two sums over different sets of sites difference to one site's share: a site whose
    policy asks for every site of its roster takes part in neither smaller sum."""
    fed = secure_sites(3, policy=Policy(secure_sum_min_sites=3))
    session, bundles = _session(fed)
    err = refused(ask(fed.executors["site1"], session, 1, bundles[1:]))
    assert err.rule == "secure_sum_sites"
    assert ask(fed.executors["site1"], session, 2, bundles).status == "released"


# -- malformed blocks -----------------------------------------------------------------------
def test_malformed_secure_blocks_are_clean_errors():
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    session, bundles = _session(fed)
    good = {"session": session, "sum": 1, "bundles": bundles}
    blocks = [
        {},
        {"session": session},
        {**good, "extra": 1},
        {**good, "session": "not hex"},
        {**good, "session": 5},
        {**good, "sum": 0},
        {**good, "sum": -3},
        {**good, "sum": 1.5},
        {**good, "sum": True},
        {**good, "sum": 2**60},
        {**good, "bundles": []},
        {**good, "bundles": "x"},
        {**good, "bundles": [1, 2]},
        {**good, "bundles": [{**bundles[0], "extra": "y"}]},
        {**good, "bundles": [{**bundles[0], "signature": "***"}]},
        {**good, "bundles": [{**bundles[0], "key": "x" * 5000}]},
        {**good, "bundles": [*bundles, *bundles[:1]] * 400},
        {**good, "bundles": [{**b, "site": "elsewhere"} for b in bundles]},
    ]
    for block in blocks:
        reply = victim.handle(SiteRequest("sum_test", "d", {}, None, "mallory", "q", block))
        err = error_from_dict(reply.error)
        assert reply.status in ("refused", "error") and reply.payload is None, block
        assert "internal error" not in err.reason and err.rule in (
            "secure_sum",
            "secure_sum_sites",
        )
    for step in ("catalog", "audit", KEYS_STEP):
        reply = victim.handle(SiteRequest(step, None, {}, None, "mallory", "q", good))
        assert "is not summed" in error_from_dict(reply.error).reason


def test_key_requests_name_a_session_only():
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    for params in ({}, {"session": "xyz"}, {"session": uuid.uuid4().hex, "other": 1}):
        reply = victim.handle(SiteRequest(KEYS_STEP, None, params, who="mallory"))
        assert isinstance(error_from_dict(reply.error), ParameterError)
    session = uuid.uuid4().hex
    assert keys(victim, session) == keys(victim, session)  # one key per session


def test_a_site_without_an_identity_takes_part_in_no_sum():
    fed = secure_sites(3)
    victim = fed.executors["site0"]
    session, bundles = _session(fed)
    victim.secure = None
    err = refused(ask(victim, session, 1, bundles), ParameterError)
    assert "no secure sums" in err.reason
