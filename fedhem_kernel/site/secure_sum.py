"""A site's part in secure sums: its session keys, and masking what a step releases.

Side: site. The coordinator is the researcher, so nothing in a secure-sum request is trusted: the
session must be one this site made a key for; every key bundle of the sum must be signed by the site
it names, with the key this site knows from its own roster (so the coordinator cannot put a key of
its own in a peer's place); the sum must include this site, with its own key, and at least
``min_sites`` sites; and each sum number is used once per session (so no two masked values share a
mask). Session keys live in memory only: a site that restarts refuses the old session, and the
coordinator asks for new keys.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import generate_key_pairs

from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.roster import Roster
from fedhem_kernel.protocol.secure_sum import (
    BAD_SUM,
    MAX_SITES,
    TOO_FEW_SITES,
    UNKNOWN_SESSION,
    Kind,
    SecureSumError,
    add_up,
    b64,
    bundle_message,
    check_bundle,
    check_session,
    close_envelope,
    decode_fields,
    encode_fields,
    envelope_key,
    group_seed,
    is_sealed,
    mask,
    open_envelope,
    pair_seed,
    parse_layout,
    public_key_bytes,
    public_key_from_bytes,
    reply_message,
    seal,
    unb64,
)
from fedhem_kernel.site.identity import SiteIdentity

#: Key sessions a site keeps at once (the oldest is forgotten first).
MAX_SESSIONS = 64
#: Sum numbers remembered per session; an older number than the window is refused as used.
SUM_WINDOW = 4096
#: Largest sum number (a JSON-safe whole number).
MAX_SUM_ID = 2**53
#: Largest noise scale a request may ask for (beyond it a release says nothing anyway).
MAX_NOISE_SCALE = 1e6


@dataclass
class _Session:
    private_key: ec.EllipticCurvePrivateKey
    bundle: dict[str, str]
    secrets: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (peer, key) -> ECDH
    used: set[int] = field(default_factory=set)
    floor: int = 0  # every sum number up to this one counts as used
    #: Key bundles whose signatures this site has checked in this session (site, key, signature).
    verified: set[tuple[str, str, str]] = field(default_factory=set)
    #: This site's group secret of the session (the mask of sealed fields: docs of
    #: :mod:`fedhem_kernel.protocol.secure_sum`), sent to peers in envelopes only.
    group_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: The ECDH secret with each peer whose signed key this site has used in the session.
    peers: dict[str, bytes] = field(default_factory=dict)

    def claim(self, sum_id: int) -> bool:
        """Mark a sum number used; False if it was used (or is older than the window)."""
        if sum_id <= self.floor or sum_id in self.used:
            return False
        self.used.add(sum_id)
        if len(self.used) > SUM_WINDOW:
            self.floor = sorted(self.used)[-SUM_WINDOW - 1]
            self.used = {s for s in self.used if s > self.floor}
        return True


@dataclass(frozen=True)
class SumPlan:
    """A checked secure-sum request: the session, the sum's number and the seeds of this site's
    masks with every other site of the sum."""

    session: str
    sum_id: int
    sites: tuple[str, ...]
    seeds: Mapping[str, bytes]
    #: DP mode: the scale of the discrete Gaussian noise the total is to carry (the coordinator's
    #: choice; a site checks it against its own policy).
    noise_scale: float | None = None
    #: This site's group secret of the session and its ECDH secret with every other site of the
    #: sum (sealed fields: the group mask, and the envelopes that carry the secret to the peers).
    group_secret: bytes = b""
    peer_secrets: Mapping[str, bytes] = field(default_factory=dict)


class SecureSumParty:
    """This site's key sessions and its checks of secure-sum requests."""

    def __init__(self, identity: SiteIdentity, roster: Roster, min_sites: int | None = None):
        if roster.get(identity.name) is None:
            raise ParameterError("the site's roster must list the site itself", site=identity.name)
        own = roster[identity.name]
        if own != identity.public_key:
            raise ParameterError(
                "the site's roster lists another identity key for the site itself",
                site=identity.name,
            )
        self.identity = identity
        self.roster = roster
        majority = len(roster) // 2 + 1
        #: A sum over fewer sites is refused. Default: every site of the roster (two sums over
        #: different sets of sites would difference to one site's counts); a policy may allow
        #: fewer, never below a majority.
        self.min_sites = len(roster) if min_sites is None else max(majority, min_sites)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.identity.name

    def _error(self, cls: type[ParameterError] | type[DisclosureError], text: str, rule: str):
        return cls(text, site=self.name, rule=rule)

    # -- key sessions -------------------------------------------------------------------------
    def keys(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """This site's signed key bundle for the session ``params["session"]`` (made once: asked
        again, the site answers with the same bundle)."""
        if set(params) != {"session"}:
            raise self._error(ParameterError, "a key request names a session only", BAD_SUM)
        try:
            session = check_session(params["session"])
        except SecureSumError as exc:
            raise self._error(ParameterError, str(exc), BAD_SUM) from None
        with self._lock:
            known = self._sessions.get(session)
            if known is None:
                private, public = generate_key_pairs()
                key = b64(public_key_bytes(public))
                message = bundle_message(self.name, session, key)
                bundle = {
                    "site": self.name,
                    "session": session,
                    "key": key,
                    "signature": b64(self.identity.sign(message)),
                }
                known = self._sessions[session] = _Session(private, bundle)
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session)
            return {"bundle": dict(known.bundle)}

    # -- sums -------------------------------------------------------------------------------
    def plan(self, secure: Any) -> SumPlan:
        """Check a request's ``secure`` block and claim its sum number (before the step runs)."""
        keys = {"session", "sum", "bundles"}
        if not isinstance(secure, dict) or not keys <= set(secure) <= keys | {"noise_scale"}:
            raise self._error(ParameterError, "malformed secure-sum request", BAD_SUM)
        noise_scale = secure.get("noise_scale")
        if noise_scale is not None and (
            isinstance(noise_scale, bool)
            or not isinstance(noise_scale, int | float)
            or not 0 < noise_scale <= MAX_NOISE_SCALE
        ):
            raise self._error(
                ParameterError, f"a noise scale is a number in (0, {MAX_NOISE_SCALE:g}]", BAD_SUM
            )
        try:
            session_id = check_session(secure["session"])
        except SecureSumError as exc:
            raise self._error(ParameterError, str(exc), BAD_SUM) from None
        sum_id = secure["sum"]
        if type(sum_id) is not int or not 1 <= sum_id <= MAX_SUM_ID:
            raise self._error(ParameterError, "a sum is numbered 1, 2, ...", BAD_SUM)
        bundles = secure["bundles"]
        if not isinstance(bundles, list) or not 1 <= len(bundles) <= MAX_SITES:
            raise self._error(
                ParameterError, f"a secure sum has 1 to {MAX_SITES} key bundles", BAD_SUM
            )
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise self._error(
                    ParameterError,
                    "this site holds no key of that secure-sum session (ask for keys again)",
                    UNKNOWN_SESSION,
                )
            checked = self._check_bundles(session, session_id, bundles)
            if len(checked) < self.min_sites:
                raise self._error(
                    DisclosureError,
                    f"this site takes part in a secure sum over at least {self.min_sites} sites",
                    TOO_FEW_SITES,
                )
            if not session.claim(sum_id):
                raise self._error(
                    DisclosureError, "this sum number was used before in this session", BAD_SUM
                )
            seeds, peer_secrets = {}, {}
            for peer, key in checked.items():
                if peer == self.name:
                    continue
                secret = session.secrets.get((peer, key))
                if secret is None:
                    secret = self._secret(session, peer, key)
                    if len(session.secrets) > MAX_SITES:
                        session.secrets.clear()
                    session.secrets[(peer, key)] = secret
                seeds[peer] = pair_seed(secret, session_id, sum_id, self.name, peer)
                if len(session.peers) < MAX_SITES or peer in session.peers:
                    session.peers[peer] = secret
                peer_secrets[peer] = secret
        scale = float(noise_scale) if noise_scale is not None else None
        return SumPlan(
            session_id,
            sum_id,
            tuple(sorted(checked)),
            seeds,
            scale,
            session.group_secret,
            peer_secrets,
        )

    def _check_bundles(
        self, session: _Session, session_id: str, bundles: list[Any]
    ) -> dict[str, str]:
        checked: dict[str, str] = {}
        for value in bundles:
            try:
                bundle = check_bundle(value)
                signature = unb64(bundle["signature"])
            except SecureSumError as exc:
                raise self._error(ParameterError, str(exc), BAD_SUM) from None
            site = bundle["site"]
            if site in checked:
                raise self._error(ParameterError, "a site is named twice in a secure sum", BAD_SUM)
            if site not in self.roster:
                raise self._error(
                    DisclosureError,
                    "a site of this secure sum is not in this site's roster",
                    BAD_SUM,
                )
            message = bundle_message(site, bundle["session"], bundle["key"])
            seen = (site, bundle["key"], bundle["signature"])
            if bundle["session"] != session_id or (
                seen not in session.verified and not self.roster.verify(site, message, signature)
            ):
                raise self._error(
                    DisclosureError,
                    f"the key bundle of site '{site}' is not signed by that site's identity key",
                    BAD_SUM,
                )
            checked[site] = bundle["key"]
            if len(session.verified) < MAX_SITES:
                session.verified.add(seen)
        if checked.get(self.name) != session.bundle["key"]:
            raise self._error(
                DisclosureError, "the secure sum does not include this site's own key", BAD_SUM
            )
        return checked

    def _secret(self, session: _Session, peer: str, key: str) -> bytes:
        """The ECDH secret of this site's session key and a peer's (signed, but the peer may still
        have sent a key that is not on this site's curve)."""
        try:
            public = public_key_from_bytes(unb64(key))
            return generate_shared_key(session.private_key, public)
        except (ValueError, TypeError, SecureSumError):
            raise self._error(
                ParameterError, f"the session key of site '{peer}' is not a P-384 key", BAD_SUM
            ) from None

    def masked(
        self, plan: SumPlan, fields: Mapping[str, tuple[Kind, Any]], binding: str
    ) -> dict[str, Any]:
        """The reply block of a sum: the layout, the masked words of ``fields`` and this site's
        signature of them (with the sum's sites and the request's ``binding``). Sealed fields
        carry this site's group mask too, and the block its group secret in an envelope for
        each other site of the sum."""
        try:
            layout, words = encode_fields(fields)
        except SecureSumError as exc:
            raise ParameterError(str(exc), site=self.name, rule=BAD_SUM) from None
        layout_list = [f.to_list() for f in layout]
        envelopes: dict[str, str] = {}
        if any(is_sealed(f.kind) for f in layout):
            seed = group_seed(plan.group_secret, plan.session, plan.sum_id, self.name)
            words = seal(words, layout, seed)
            for peer, secret in plan.peer_secrets.items():
                key = envelope_key(secret, plan.session, self.name, peer)
                envelopes[peer] = close_envelope(
                    key, plan.group_secret, plan.session, self.name, peer
                )
        masked = mask(words, self.name, plan.seeds)
        message = reply_message(
            self.name,
            plan.session,
            plan.sum_id,
            plan.sites,
            binding,
            layout_list,
            masked,
            envelopes,
        )
        block = {
            "layout": layout_list,
            "masked": masked,
            "signature": b64(self.identity.sign(message)),
        }
        if envelopes:
            block["envelopes"] = envelopes
        return block

    def verify_total(
        self, evidence: Any, binding: str, sites_now: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """The total of an earlier sum, from the signed replies the coordinator shows
        (``evidence``): checked to be every site's reply of that sum, each signed by its site's
        identity key for the request of ``binding``, and the sum's sites to be among
        ``sites_now`` (the sites of the sum now asked: a decision taken over some sites must not
        be released over fewer). Raises a DisclosureError (rule ``secure_sum``) otherwise.

        Sealed fields are opened: the group masks of every site of the sum removed, with the group
        secrets in the envelopes addressed to this site (and its own)."""

        def refuse(why: str) -> DisclosureError:
            return self._error(DisclosureError, f"the evidence of an earlier sum {why}", BAD_SUM)

        if not isinstance(evidence, dict) or set(evidence) != {"session", "sum", "replies"}:
            raise refuse("is malformed")
        session, sum_id, replies = evidence["session"], evidence["sum"], evidence["replies"]
        try:
            check_session(session)
        except SecureSumError:
            raise refuse("is malformed") from None
        if type(sum_id) is not int or not isinstance(replies, dict) or not replies:
            raise refuse("is malformed")
        if len(replies) > MAX_SITES or self.name not in replies:
            raise refuse("does not include this site's reply")
        sites = tuple(sorted(replies))
        if not set(sites) <= set(sites_now):
            raise refuse("was over sites that are not all in this sum")
        layouts, vectors = set(), []
        for site in sites:
            reply = replies[site]
            if not isinstance(reply, dict) or not (
                {"layout", "masked", "signature"} <= set(reply) <= _BLOCK_KEYS
            ):
                raise refuse("is malformed")
            envelopes = reply.get("envelopes")
            if envelopes is not None and (
                not isinstance(envelopes, dict) or len(envelopes) > MAX_SITES
            ):
                raise refuse("is malformed")
            try:
                layout = parse_layout(reply["layout"])
                signature = unb64(reply["signature"])
            except SecureSumError:
                raise refuse("is malformed") from None
            words = reply["masked"]
            size = sum(f.words for f in layout)
            if (
                not isinstance(words, np.ndarray)
                or words.dtype != np.uint64
                or words.shape != (size,)
            ):
                raise refuse("is malformed")
            message = reply_message(
                site, session, sum_id, sites, binding, reply["layout"], words, envelopes
            )
            if site not in self.roster or not self.roster.verify(site, message, signature):
                raise refuse(f"has a reply not signed by site '{site}' for this request")
            layouts.add(tuple(layout))
            vectors.append(words)
        if len(layouts) != 1:
            raise refuse("has replies of different shapes")
        layout = list(next(iter(layouts)))
        total = add_up(vectors)
        if any(is_sealed(f.kind) for f in layout):
            total = self._unsealed(total, layout, session, sum_id, replies, refuse)
        return decode_fields(layout, total, sealed=True)

    def _unsealed(
        self,
        total: np.ndarray,
        layout: list[Any],
        session_id: str,
        sum_id: int,
        replies: Mapping[str, Any],
        refuse: Any,
    ) -> np.ndarray:
        """``total`` without the group masks of the sum's sites (their secrets from the
        envelopes addressed to this site, opened with the key only the two sites hold)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise self._error(
                    DisclosureError,
                    "this site no longer holds the key session of an earlier sum it builds on "
                    "(it restarted): the analysis must start again",
                    BAD_SUM,
                )
            own, peers = session.group_secret, dict(session.peers)
        for site in sorted(replies):
            if site == self.name:
                secret = own
            else:
                envelope = (replies[site].get("envelopes") or {}).get(self.name)
                if site not in peers or envelope is None:
                    raise refuse(f"has no envelope from site '{site}' for this site")
                key = envelope_key(peers[site], session_id, site, self.name)
                try:
                    secret = open_envelope(key, envelope, session_id, site, self.name)
                except SecureSumError:
                    raise refuse(f"has an envelope from site '{site}' that does not open") from None
            total = seal(total, layout, group_seed(secret, session_id, sum_id, site), remove=True)
        return total


_BLOCK_KEYS = {"layout", "masked", "signature", "envelopes"}


def secure_fields(
    payload: Mapping[str, Any], sums: Mapping[str, Kind]
) -> dict[str, tuple[Kind, np.ndarray]]:
    """The summed fields of a step's payload, by name, with their kinds."""
    return {name: (kind, np.asarray(payload[name])) for name, kind in sums.items()}
