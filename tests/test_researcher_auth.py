"""Sites authenticate researchers themselves (protocol/auth.py): a site that lists researchers
answers only requests signed by one of their keys, refuses (and audits) unsigned, unknown,
altered, stale and replayed requests, and records the researcher by its own name for the key."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.__main__ import main
from fedhem_kernel.protocol.auth import ResearcherKey, Researchers
from fedhem_kernel.protocol.codec import decode_request, encode_request
from fedhem_kernel.protocol.messages import SiteRequest


@pytest.fixture
def keys(tmp_path):
    out = {}
    for who in ("alice", "bob"):
        assert main(["keys", "--out", str(tmp_path / f"{who}.key")]) == 0
        out[who] = tmp_path / f"{who}.key"
    return out


@pytest.fixture
def federation_file(tmp_path, keys):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"age": rng.normal(60, 10, 120).round(1), "x": rng.normal(size=120)})
    df.to_csv(tmp_path / "aml.csv", index=False)
    alice = (tmp_path / "alice.key.pub").read_text().strip()
    (tmp_path / "site_a.toml").write_text(
        textwrap.dedent(
            f"""
            [site]
            name = "site_a"
            audit_log = "audit/site_a.jsonl"
            [researchers]
            alice = "{alice}"
            [datasets.aml]
            path = "aml.csv"
            """
        )
    )
    path = tmp_path / "federation.toml"
    path.write_text('[sites.site_a]\nconfig = "site_a.toml"\n')
    return path


def audit(tmp_path) -> list[dict]:
    text = (tmp_path / "audit" / "site_a.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_listed_researcher_is_answered_and_audited_by_the_sites_name(
    tmp_path, keys, federation_file
):
    with fh.Federation.from_config(federation_file, key=keys["alice"], user="mallory") as fed:
        res = fed.describe("aml", ["age"])
    assert res.privacy.released_sites == ["site_a"]
    entry = audit(tmp_path)[-1]
    assert entry["who"] == "alice"  # the site's name for the key, not the claimed user
    assert entry["key"] == ResearcherKey.from_file(keys["alice"]).id
    assert main(["audit", "verify", "--config", str(tmp_path / "site_a.toml")]) == 0


@pytest.mark.parametrize("who", ["unsigned", "bob"])
def test_unsigned_requests_and_unknown_keys_are_refused_and_audited(
    tmp_path, keys, federation_file, who
):
    key = None if who == "unsigned" else keys[who]
    with fh.Federation.from_config(federation_file, key=key, user="mallory") as fed:
        with pytest.raises(fh.FedHemError) as info:
            fed.describe("aml", ["age"])
    assert info.value.rule == "authentication" or "authentication" in str(info.value)
    entry = audit(tmp_path)[-1]
    assert entry["outcome"] == "refused" and entry["rule"] == "authentication"
    assert entry["who"] == "mallory (unverified)" and "key" not in entry


def test_altered_stale_and_replayed_requests_are_refused():
    alice = ResearcherKey.generate()
    site = Researchers({"alice": alice.public_text})
    request = SiteRequest("describe_stats", "aml", {"columns": ["age"]}, "age > 50", "alice")
    signed = dataclasses.replace(request, auth=alice.sign(request))
    # through the wire codec, as a site receives it
    received = decode_request(encode_request(signed))
    assert site.check(received) == ("alice", alice.id)
    with pytest.raises(ValueError, match="replay"):
        site.check(received)
    for changed in (
        dataclasses.replace(signed, where="age > 49"),
        dataclasses.replace(signed, params={"columns": ["x"]}),
        dataclasses.replace(signed, dataset="mds"),
        dataclasses.replace(signed, who="bob"),
        dataclasses.replace(signed, secure={"session": "0" * 32}),
    ):
        fresh = Researchers({"alice": alice.public_text})
        with pytest.raises(ValueError, match="does not match"):
            fresh.check(changed)
    stale = dataclasses.replace(request, auth=alice.sign(request))
    with pytest.raises(ValueError, match="too old"):
        Researchers({"alice": alice.public_text}).check(stale, now=time.time() + 301)
    # signed before the site (re)started: a replay across a restart
    with pytest.raises(ValueError, match="too old"):
        Researchers({"alice": alice.public_text}, started=time.time() + 60).check(
            dataclasses.replace(request, auth=alice.sign(request))
        )
    forged = dict(alice.sign(request), key=ResearcherKey.generate().id)
    with pytest.raises(ValueError, match="does not accept"):
        site.check(dataclasses.replace(request, auth=forged))
    for bad in ({}, {"key": 1}, dict(alice.sign(request), time=True), "x"):
        with pytest.raises(ValueError):
            site.check(dataclasses.replace(request, auth=bad))


def test_a_bad_researchers_table_names_the_site(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[site]\nname = "s"\n[researchers]\nalice = "not a key"\n[datasets.a]\npath = "a.csv"\n'
    )
    from fedhem_kernel.site.config import SiteConfig

    with pytest.raises(fh.SchemaError, match="alice") as info:
        SiteConfig.from_toml(tmp_path / "s.toml")
    assert info.value.site == "s"


def test_signed_requests_reach_sites_in_their_own_process(tmp_path, keys, federation_file):
    with fh.Federation.from_config(federation_file, key=keys["alice"], isolation="process") as fed:
        assert fed.describe("aml", ["age"]).privacy.released_sites == ["site_a"]
    with fh.Federation.from_config(federation_file, key=keys["bob"], isolation="process") as fed:
        with pytest.raises(fh.FedHemError):
            fed.describe("aml", ["age"])
    entries = [e for e in audit(tmp_path) if e.get("analysis") != "load"]
    assert entries[-1]["rule"] == "authentication" and entries[-1]["outcome"] == "refused"
    assert any(e["who"] == "alice" and e["outcome"] == "released" for e in entries)


# -- sites sign their replies -------------------------------------------------------------------
def test_a_reply_changed_on_its_way_is_ignored_and_a_signature_binds_its_request(monkeypatch):
    import fedhem_kernel.engine.coordinator as coordinator_module
    from fedhem_kernel.protocol.auth import reply_is_signed

    tables = {
        s: {"d": pd.DataFrame({"age": np.arange(40.0) + i, "x": np.ones(40)})}
        for i, s in enumerate(["north", "south"])
    }
    catalog = SiteRequest("catalog", None, {}, None, "alice")
    with fh.Federation.local(tables) as fed:
        # embedded sites (in the researcher's process) do not sign; sites with identity keys
        # of their own do (test_sites_with_identity_keys_sign_and_are_checked): turn it on here
        assert fed.coordinator.site_keys is None
        for executor in sites_of(fed).values():
            executor.sign_replies = True
        fed.coordinator.site_keys = {
            name: ex.secure.identity.public_key for name, ex in sites_of(fed).items()
        }
        assert fed.describe("d", ["age"]).privacy.released_sites == ["north", "south"]
        original = coordinator_module._decoded

        def changed(content, site):
            reply = original(content, site)
            if site == "south":
                reply.payload["datasets"] = {}  # changed in transit
            return reply

        monkeypatch.setattr(coordinator_module, "_decoded", changed)
        replies = fed.coordinator.send(catalog)
        assert replies["north"].status == "released"
        assert replies["south"].status == "error"
        assert "not signed by this site's key" in replies["south"].error["reason"]
        monkeypatch.setattr(coordinator_module, "_decoded", original)
        reply = fed.coordinator.send(catalog)["north"]
    key = fed.coordinator.site_keys["north"]
    assert reply_is_signed(key, reply, catalog)
    assert not reply_is_signed(key, reply, dataclasses.replace(catalog, who="bob"))
    assert not reply_is_signed(fed.coordinator.site_keys["south"], reply, catalog)
    assert not reply_is_signed(key, dataclasses.replace(reply, signature=None), catalog)


def test_sites_with_identity_keys_sign_and_are_checked(tmp_path, keys, federation_file):
    """A site whose config names its identity key signs every reply; the researcher's side
    checks each against the key the site host reported."""
    main(["keys", "--out", str(tmp_path / "site_a.identity")])
    site = tmp_path / "site_a.toml"
    site.write_text(
        site.read_text().replace("[site]\n", '[site]\nidentity_key = "site_a.identity"\n', 1)
    )
    for isolation in ("in-process", "process"):
        with fh.Federation.from_config(
            federation_file, key=keys["alice"], isolation=isolation
        ) as fed:
            assert set(fed.coordinator.site_keys) == {"site_a"}
            assert fed.describe("aml", ["age"]).privacy.released_sites == ["site_a"]
