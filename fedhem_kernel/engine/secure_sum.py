"""The coordinator's side of secure sums: a key session with the sites, and totals over them.

Side: researcher. The coordinator forwards the sites' signed session keys and adds up the masked
vectors they send; it learns the total over the sites of a sum and nothing of any one site's share
(:mod:`fedhem_kernel.protocol.secure_sum`). A site that does not answer leaves masks that do not
cancel: the sum is asked again of the sites that did (a new sum number, so a new mask). A site that
restarted forgets the session: it is asked for a new key, once per query.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from fedhem_kernel.errors import FedHemError, error_from_dict
from fedhem_kernel.protocol.messages import KEYS_STEP, SiteReply, SiteRequest
from fedhem_kernel.protocol.secure_sum import (
    MAX_SITES,
    UNKNOWN_SESSION,
    FieldLayout,
    SecureSumError,
    SecureTotal,
    add_up,
    check_bundle,
    decode_fields,
    parse_layout,
)

if TYPE_CHECKING:
    from fedhem_kernel.engine.coordinator import Query

#: Rounds one secure sum may take (each drops the sites that did not answer the one before).
MAX_ROUNDS = 4


class KeySession:
    """A coordinator's key session: its name, each site's signed key bundle, and sum numbers."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.bundles: dict[str, dict[str, str]] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def next_sum(self) -> int:
        with self._lock:
            return next(self._numbers)


def _bundle(reply: SiteReply, site: str, session: str) -> dict[str, str] | None:
    payload = reply.payload
    if reply.status != "released" or not isinstance(payload, dict) or set(payload) != {"bundle"}:
        return None
    try:
        bundle = check_bundle(payload["bundle"])
    except SecureSumError:
        return None
    return bundle if bundle["site"] == site and bundle["session"] == session else None


Answer = tuple[list[FieldLayout], np.ndarray, dict[str, Any], dict[str, Any]]


def _masked(reply: SiteReply) -> Answer | None:
    """A secure reply's layout, masked words, shared fields and the signed block itself (None
    if it is not one)."""
    payload = reply.payload
    if reply.status not in ("released", "suppressed") or not isinstance(payload, dict):
        return None
    block = payload.get("secure")
    if not isinstance(block, dict) or not (
        {"layout", "masked", "signature"}
        <= set(block)
        <= {"layout", "masked", "signature", "envelopes"}
    ):
        return None
    if not isinstance(block["signature"], str) or len(block["signature"]) > 4096:
        return None
    envelopes = block.get("envelopes")
    if envelopes is not None and (
        not isinstance(envelopes, dict)
        or len(envelopes) > MAX_SITES
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in envelopes.items())
    ):
        return None
    try:
        layout = parse_layout(block["layout"])
    except SecureSumError:
        return None
    words = block["masked"]
    size = sum(f.words for f in layout)
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.shape != (size,):
        return None
    return layout, words, {k: v for k, v in payload.items() if k != "secure"}, block


def _malformed(site: str) -> SiteReply:
    error = FedHemError("malformed secure-sum reply from the site", site=site)
    return SiteReply(site, "error", error=error.to_dict())


def session_keys(query: Query, sites: list[str]) -> None:
    """Ask ``sites`` that have no key in the coordinator's session for one; a site that does not
    give one is dropped from the query (its reason goes into the report)."""
    session = query.coordinator.keys
    missing = [s for s in sites if s not in session.bundles]
    if not missing:
        return
    request = SiteRequest(KEYS_STEP, None, {"session": session.id}, None, query.who, query.query_id)
    replies = query.coordinator.send(request, missing)
    for site in missing:
        reply = replies[site]
        bundle = _bundle(reply, site, session.id)
        if bundle is None:
            query.record(site, reply if reply.status == "error" else _malformed(site))
            query.drop(site)
        else:
            session.bundles[site] = bundle


def ask_sum(
    query: Query, step: str, params: dict[str, Any], noise_scale: float | None = None
) -> SecureTotal:
    """One secure sum of ``step``'s summed fields over the sites still taking part in ``query``;
    ``noise_scale``: DP mode, the scale of the noise the total carries (each site adds its share)."""
    query.start()
    session = query.coordinator.keys
    rekeyed: set[str] = set()
    for _ in range(MAX_ROUNDS):
        session_keys(query, list(query.active))
        sites = [s for s in query.active if s in session.bundles]
        if not sites:
            raise query.failure()
        secure: dict[str, Any] = {
            "session": session.id,
            "sum": session.next_sum(),
            "bundles": [session.bundles[s] for s in sites],
        }
        if noise_scale is not None:
            secure["noise_scale"] = float(noise_scale)
        request = SiteRequest(
            step, query.dataset, params, query.where, query.who, query.query_id, secure
        )
        replies = query.coordinator.send(request, sites)
        answers: dict[str, Answer] = {}
        again = False
        for site in sites:
            reply = replies[site]
            if _rule(reply) == UNKNOWN_SESSION and site not in rekeyed:
                session.bundles.pop(site, None)  # it restarted: a new key, then the sum again
                rekeyed.add(site)
                again = True
                continue
            answer = _masked(reply)
            if answer is None and reply.status in ("released", "suppressed"):
                reply = _malformed(site)
            query.record(site, reply)
            if answer is None:
                query.drop(site)
            else:
                answers[site] = answer
        if again or len(answers) < len(sites):
            if answers and not again:
                query.note(
                    f"the secure sum was asked again of the {len(answers)} sites that answered"
                )
            continue
        query.note(f"secure sum over {len(answers)} sites: only their total was seen")
        return _total(answers, session.id, secure["sum"])
    raise FedHemError(
        f"the secure sum did not complete in {MAX_ROUNDS} rounds (sites kept dropping out)",
        dataset=query.dataset,
    )


def _rule(reply: SiteReply) -> str | None:
    if reply.error is None:
        return None
    try:
        return error_from_dict(reply.error).rule
    except Exception:  # noqa: BLE001 - a malformed error is no known rule
        return None


def _total(answers: dict[str, Answer], session: str, sum_id: int) -> SecureTotal:
    layouts = {tuple(layout) for layout, _, _, _ in answers.values()}
    if len(layouts) != 1:
        raise FedHemError("the sites of a secure sum sent summed fields of different shapes")
    layout = next(iter(layouts))
    total = add_up([words for _, words, _, _ in answers.values()])
    return SecureTotal(
        decode_fields(list(layout), total),  # a sealed field's total is the sites' alone
        tuple(answers),
        {site: shared for site, (_, _, shared, _) in answers.items()},
        {
            "session": session,
            "sum": sum_id,
            "replies": {site: dict(block) for site, (_, _, _, block) in answers.items()},
        },
    )
