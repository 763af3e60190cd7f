"""Secure sums: what both sides need to know of the masked vectors a site sends.

Side: shared (the site masks, the coordinator adds up; neither imports the other).

The scheme (see ``docs/privacy.md``, "Secure aggregation"): every site of a sum holds a key pair of
the coordinator's *key session* (Flower's ECDH helpers, curve P-384), signed with the site's identity
key (Ed25519) so that the coordinator cannot substitute a key; each site knows the other sites'
identity keys from its own roster. For a sum over the sites ``P``, site ``i`` sends

    y_i = encode(x_i) + sum over j in P, j != i of  ±PRG(k_ij, sum)      (mod 2^64, per word)

where ``k_ij`` comes from the ECDH secret of ``i`` and ``j``, the session and the sum's number
(HKDF-SHA256), the PRG is ChaCha20 (``cryptography``), and the sign is + when ``i``'s name sorts
before ``j``'s. The masks cancel in the total over ``P`` and in no smaller set, and no mask is ever
revealed: a site that does not answer makes the sum useless, and the coordinator asks the sum again
of the sites that answered (each site refuses a sum with fewer sites than its policy's minimum, and
each sum's number once).

Values travel as 64-bit words: a *count* (whole numbers up to 2^52 in size) as one word; a *real*
as three 42-bit signed digits of the value in fixed point with 50 fractional bits (absolute
resolution 2^-50 ≈ 8.9e-16, magnitude below 2^75 ≈ 3.8e22). The sum of every digit over up to
:data:`MAX_SITES` sites stays below 2^63, so the total is exact in the integers and the real's
rounding is that of its encoding alone.

*Sealed* fields (kinds ``sealed-count`` and ``sealed-real``) are totals for the sites' eyes only:
each site adds to their words, besides the pairwise masks, a mask of its own ``PRG(g_i, sum)``
from a group secret ``g_i`` it makes per session, and sends ``g_i`` to each other site of the sum
in an *envelope* (ChaCha20-Poly1305 under a key from their ECDH secret, which the coordinator never
learns). The coordinator adds up the words as for any sum, but the total of a sealed field is
``Σ x_i + Σ PRG(g_i, sum)``: noise to it. A site shown the signed replies of the sum opens the
envelopes addressed to it and removes ``Σ PRG(g_i, sum)``: a later round of an iterative fit can
build on a total the researcher never sees (the pooled Cox fit's per-block risk-set sums).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCHEME = "fedhem-secure-sum/1"

#: Most sites in one sum (each 42-bit digit summed over them stays below 2^63).
MAX_SITES = 1024
#: Most words (64-bit values) of one masked vector: 2^24 words, 128 MiB.
MAX_WORDS = 2**24

LANE_BITS = 42
REAL_LANES = 3
FRACTION_BITS = 50
#: A real's magnitude must stay below this (its fixed-point form has 3 * 42 - 1 bits).
REAL_LIMIT = 2.0 ** (REAL_LANES * LANE_BITS - 1 - FRACTION_BITS)
#: A count's magnitude must stay below this.
COUNT_LIMIT = 2**52

Kind = Literal["count", "real", "sealed-count", "sealed-real"]
KINDS: dict[str, int] = {  # words per value
    "count": 1,
    "real": REAL_LANES,
    "sealed-count": 1,
    "sealed-real": REAL_LANES,
}
SEALED = "sealed-"


def base_kind(kind: str) -> Kind:
    """``count`` or ``real``: how a (sealed or open) field's values are encoded."""
    return kind.removeprefix(SEALED)  # type: ignore[return-value]


def is_sealed(kind: str) -> bool:
    """Whether a field's total is for the sites' eyes only."""
    return kind.startswith(SEALED)


#: The rule a site refuses a session it holds no key of with: the coordinator asks for a new key
#: and tries once more.
UNKNOWN_SESSION = "secure_sum_session"
#: The rule of a sum over fewer sites than a site's minimum.
TOO_FEW_SITES = "secure_sum_sites"
#: The rule of any other secure-sum request a site will not take part in.
BAD_SUM = "secure_sum"

_SESSION = re.compile(r"[0-9a-f]{32}")


class SecureSumError(ValueError):
    """A masked vector or a key bundle that does not fit the scheme (no value is quoted)."""


# -- fields and their layout --------------------------------------------------------------------
@dataclass(frozen=True)
class FieldLayout:
    """One summed field: its name, kind and array shape (the same at every site of a sum)."""

    name: str
    kind: Kind
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def words(self) -> int:
        return self.size * KINDS[self.kind]

    def to_list(self) -> list[Any]:
        return [self.name, self.kind, list(self.shape)]

    @classmethod
    def from_list(cls, value: Any) -> FieldLayout:
        if not (isinstance(value, list) and len(value) == 3):
            raise SecureSumError("malformed layout of a secure sum")
        name, kind, shape = value
        if not isinstance(name, str) or kind not in KINDS or not isinstance(shape, list):
            raise SecureSumError("malformed layout of a secure sum")
        if len(shape) > 8 or not all(type(d) is int and 0 <= d <= MAX_WORDS for d in shape):
            raise SecureSumError("malformed layout of a secure sum")
        return cls(name, kind, tuple(shape))


def layout_of(fields: Mapping[str, tuple[Kind, Any]]) -> list[FieldLayout]:
    """The layout of ``{name: (kind, values)}``, in name order (the order the words travel in)."""
    out = []
    for name in sorted(fields):
        kind, values = fields[name]
        if kind not in KINDS:
            raise SecureSumError(f"unknown kind of summed field {name!r}")
        out.append(FieldLayout(name, kind, tuple(np.shape(values))))
    if sum(f.words for f in out) > MAX_WORDS:
        raise SecureSumError(f"a secure sum carries at most {MAX_WORDS} values")
    return out


def parse_layout(value: Any) -> list[FieldLayout]:
    """A layout as it travels (a list of ``[name, kind, shape]``), checked."""
    if not isinstance(value, list) or len(value) > 256:
        raise SecureSumError("malformed layout of a secure sum")
    layout = [FieldLayout.from_list(v) for v in value]
    names = [f.name for f in layout]
    if names != sorted(set(names)):
        raise SecureSumError("malformed layout of a secure sum")
    if sum(f.words for f in layout) > MAX_WORDS:
        raise SecureSumError(f"a secure sum carries at most {MAX_WORDS} values")
    return layout


# -- encoding -----------------------------------------------------------------------------------
def encode(kind: Kind, values: Any) -> np.ndarray:
    """``values`` as 64-bit words (``uint64``, ``KINDS[kind]`` words per value, digit-major).

    Raises :class:`SecureSumError` for a value that is not finite, not whole (a count) or out of
    range; the message says which rule, never the value.
    """
    x = np.asarray(values, dtype=float).reshape(-1)
    if not np.isfinite(x).all():
        raise SecureSumError("a summed value is missing or not finite")
    kind = base_kind(kind)
    if kind == "count":
        if not (np.abs(x) < COUNT_LIMIT).all() or not (x == np.round(x)).all():
            raise SecureSumError(f"a summed count is not a whole number below {COUNT_LIMIT}")
        return x.astype(np.int64).view(np.uint64)
    if kind != "real":
        raise SecureSumError(f"unknown kind {kind!r} of a summed field")
    if not (np.abs(x) < REAL_LIMIT).all():
        raise SecureSumError(f"a summed value is {REAL_LIMIT:.3g} or more in size")
    scaled = np.round(np.abs(x) * 2.0**FRACTION_BITS)  # exact: a power-of-two scaling, then whole
    sign = np.where(x < 0, -1, 1).astype(np.int64)
    base = 2.0**LANE_BITS
    digits = np.empty((REAL_LANES, x.size), dtype=np.int64)
    for lane in range(REAL_LANES):  # exact float arithmetic on whole numbers below 2^125
        part = np.floor(scaled / base**lane)
        digits[lane] = np.mod(part, base).astype(np.int64) if lane < REAL_LANES - 1 else part
    return (digits * sign).view(np.uint64).reshape(-1)


def decode(kind: Kind, words: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The total of summed words (``uint64``, as :func:`encode` lays them out) as numbers."""
    signed = np.asarray(words, dtype=np.uint64).view(np.int64)
    if base_kind(kind) == "count":
        return signed.reshape(shape).copy()
    digits = signed.reshape(REAL_LANES, -1).astype(float)  # exact: each below 2^52 in size
    total = np.zeros(digits.shape[1])
    for lane in reversed(range(REAL_LANES)):  # largest first: one rounding at the end of each
        total += digits[lane] * 2.0 ** (lane * LANE_BITS - FRACTION_BITS)
    return total.reshape(shape)


def encode_fields(fields: Mapping[str, tuple[Kind, Any]]) -> tuple[list[FieldLayout], np.ndarray]:
    """Every field's words, in layout order, as one vector (with the layout)."""
    layout = layout_of(fields)
    parts = [encode(f.kind, fields[f.name][1]) for f in layout]
    words = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return layout, words


def decode_fields(
    layout: Sequence[FieldLayout], words: np.ndarray, *, sealed: bool = False
) -> dict[str, np.ndarray]:
    """The totals by field name, from the summed vector of :func:`encode_fields`; sealed fields
    only with ``sealed=True`` (a site, once it removed the group masks: :func:`unseal`)."""
    if words.dtype != np.uint64 or words.shape != (sum(f.words for f in layout),):
        raise SecureSumError("a summed vector does not fit its layout")
    out, at = {}, 0
    for f in layout:
        if sealed or not is_sealed(f.kind):
            out[f.name] = decode(f.kind, words[at : at + f.words], f.shape)
        at += f.words
    return out


def sealed_positions(layout: Sequence[FieldLayout]) -> np.ndarray:
    """The indices of the words of sealed fields, in layout order."""
    parts, at = [], 0
    for f in layout:
        if is_sealed(f.kind):
            parts.append(np.arange(at, at + f.words))
        at += f.words
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# -- masks --------------------------------------------------------------------------------------
def pair_seed(secret: bytes, session: str, sum_id: int, a: str, b: str) -> bytes:
    """The 32-byte PRG key of sites ``a`` and ``b`` for one sum (HKDF-SHA256 of their ECDH
    secret; the same whichever of the two derives it)."""
    lo, hi = sorted((a, b))
    info = json.dumps([SCHEME, session, sum_id, lo, hi]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def prg_words(seed: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random 64-bit words from a 32-byte seed (ChaCha20 keystream; every seed is
    used for one sum only, so the nonce is fixed)."""
    cipher = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(cipher.update(bytes(8 * n)), dtype=np.uint64)


def mask(words: np.ndarray, me: str, seeds: Mapping[str, bytes]) -> np.ndarray:
    """``words`` plus the pairwise masks of ``me`` with every other site of the sum (mod 2^64):
    ``seeds`` maps each other site to its :func:`pair_seed` with ``me``."""
    out = np.array(words, dtype=np.uint64, copy=True)
    for other, seed in seeds.items():
        stream = prg_words(seed, out.size)
        if me < other:
            out += stream
        else:
            out -= stream
    return out


# -- sealed totals: a mask the sites share and the coordinator does not ---------------------------
def group_seed(secret: bytes, session: str, sum_id: int, site: str) -> bytes:
    """The 32-byte PRG key of ``site``'s group mask for one sum (HKDF-SHA256 of its group secret)."""
    info = json.dumps([SCHEME, "group", session, sum_id, site]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def seal(
    words: np.ndarray, layout: Sequence[FieldLayout], seed: bytes, *, remove: bool = False
) -> np.ndarray:
    """``words`` with the group mask of ``seed`` added to (``remove``: taken from) the words of
    the sealed fields (mod 2^64)."""
    out = np.array(words, dtype=np.uint64, copy=True)
    at = sealed_positions(layout)
    if at.size:
        stream = prg_words(seed, at.size)
        out[at] = out[at] - stream if remove else out[at] + stream
    return out


def envelope_key(secret: bytes, session: str, a: str, b: str) -> bytes:
    """The 32-byte key of the envelopes between sites ``a`` and ``b`` in a session (HKDF-SHA256 of
    their ECDH secret; the same whichever of the two derives it)."""
    lo, hi = sorted((a, b))
    info = json.dumps([SCHEME, "envelope", session, lo, hi]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _envelope_aad(session: str, sender: str, to: str) -> bytes:
    return json.dumps([SCHEME, "envelope", session, sender, to]).encode()


def close_envelope(key: bytes, group_secret: bytes, session: str, sender: str, to: str) -> str:
    """``sender``'s group secret for ``to`` (ChaCha20-Poly1305, a fresh random nonce), as text."""
    nonce = secrets.token_bytes(12)
    box = ChaCha20Poly1305(key).encrypt(nonce, group_secret, _envelope_aad(session, sender, to))
    return b64(nonce + box)


def open_envelope(key: bytes, text: Any, session: str, sender: str, to: str) -> bytes:
    """The group secret in an envelope from ``sender`` to ``to`` (SecureSumError if it was not
    sealed with their key for this session)."""
    if not isinstance(text, str) or len(text) > 256:
        raise SecureSumError("malformed envelope")
    data = unb64(text)
    try:
        return ChaCha20Poly1305(key).decrypt(
            data[:12], data[12:], _envelope_aad(session, sender, to)
        )
    except (InvalidTag, ValueError):
        raise SecureSumError("an envelope does not open with its sites' key") from None


def add_up(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The word-wise total (mod 2^64) of the masked vectors of every site of a sum."""
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total += v
    return total


# -- signed replies (evidence of a total) --------------------------------------------------------
def _canonical(value: Any) -> Any:
    """A JSON-ready form of request parameters, exact for arrays (their dtype, shape and a
    digest of their bytes) and fast for large ones."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return [
            "ndarray",
            data.dtype.str,
            list(data.shape),
            hashlib.sha256(data.tobytes()).hexdigest(),
        ]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return ["bytes", hashlib.sha256(value).hexdigest()]
    return value


def _json_default(value: Any) -> Any:
    """:func:`_canonical`'s form of what JSON does not take itself (arrays, numpy scalars,
    bytes); anything else as text."""
    if isinstance(value, np.ndarray | np.generic | bytes):
        return _canonical(value)
    return str(value)


def request_binding(step: str, dataset: str | None, where: str | None, params: Any) -> str:
    """A digest of what a sum was asked for (step, dataset, filter and parameters): a site signs
    it with its masked reply, so a total cannot be passed off as the answer to another request.

    JSON's own (C) encoder walks the parameters, arrays and numpy scalars by :func:`_canonical`'s
    form; keys JSON cannot sort (mixed types) fall back to walking them all in Python."""
    try:
        text = json.dumps(
            [SCHEME, step, dataset, where, params],
            sort_keys=True,
            default=_json_default,
            separators=(",", ":"),
        )
    except TypeError:
        text = json.dumps(
            [SCHEME, step, dataset, where, _canonical(params)],
            sort_keys=True,
            default=str,
            separators=(",", ":"),
        )
    return hashlib.sha256(text.encode()).hexdigest()


def reply_message(
    site: str,
    session: str,
    sum_id: int,
    sites: Sequence[str],
    binding: str,
    layout: Any,
    masked: np.ndarray,
    envelopes: Mapping[str, str] | None = None,
) -> bytes:
    """What a site signs of a masked reply: the sum (session, number and every site in it), the
    request's binding, the layout and a digest of the masked words (and the envelopes of a sum
    with sealed fields). The other sites of the sum can check a total they are shown was made of
    these replies, all of them, for this request."""
    digest = hashlib.sha256(np.asarray(masked, dtype="<u8").tobytes()).hexdigest()
    signed = [SCHEME, "reply", site, session, sum_id, sorted(sites), binding, layout, digest]
    if envelopes:
        signed.append(sorted(envelopes.items()))
    return json.dumps(signed).encode()


# -- key bundles --------------------------------------------------------------------------------
def check_session(value: Any) -> str:
    if not isinstance(value, str) or not _SESSION.fullmatch(value):
        raise SecureSumError("a secure-sum session is named by 32 hexadecimal digits")
    return value


def bundle_message(site: str, session: str, key: str) -> bytes:
    """What a site signs for a session's key: the scheme, its name, the session and the key."""
    return json.dumps([SCHEME, site, session, key]).encode()


BUNDLE_FIELDS = ("site", "session", "key", "signature")


def check_bundle(value: Any) -> dict[str, str]:
    """A key bundle's shape: ``{"site", "session", "key", "signature"}``, all text."""
    if not isinstance(value, dict) or set(value) != set(BUNDLE_FIELDS):
        raise SecureSumError("malformed key bundle")
    if not all(isinstance(value[k], str) and len(value[k]) <= 4096 for k in BUNDLE_FIELDS):
        raise SecureSumError("malformed key bundle")
    check_session(value["session"])
    return {k: value[k] for k in BUNDLE_FIELDS}


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """A session key as it travels: the compressed point (49 bytes on P-384)."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def public_key_from_bytes(data: bytes) -> ec.EllipticCurvePublicKey:
    """A session key from its compressed point (ValueError if it is not a point of P-384)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise SecureSumError("malformed key bundle") from None


@dataclass(frozen=True)
class SecureTotal:
    """What a combine step gets of a secure sum: the totals over ``sites`` by field, and each
    site's shared (unsummed) fields."""

    totals: dict[str, np.ndarray]
    sites: tuple[str, ...]
    shared: dict[str, dict[str, Any]]
    #: The signed masked replies the total was made of (``session``, ``sum``, ``replies``): shown
    #: to the sites of a later round, they let each check a decision taken from this total.
    evidence: dict[str, Any] | None = None
