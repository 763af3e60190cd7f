"""Researchers authenticated by the sites themselves: every request signed with the researcher's key.

Side: shared (the researcher signs, the site checks; neither imports the other).

A site that lists researchers (``[researchers]`` in its config: name = OpenSSH Ed25519 public
key) answers only requests signed by one of those keys: the signature covers the step, dataset,
filter, parameters (a digest), the secure-sum block, the query id, a random nonce and the time,
so a coordinator (the researcher's own, or one in between) cannot change a request, pose as a
researcher the site has not accepted, or replay one (a nonce is taken once; a request older than
:data:`WINDOW` seconds, or signed before the site last started, is refused). The site then
records the researcher by the name it gave the key, never by what the request claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.protocol.secure_sum import request_binding

if TYPE_CHECKING:
    from fedhem_kernel.protocol.messages import SiteReply, SiteRequest

SCHEME = "fedhem-request/1"
#: Seconds a signed request stays acceptable (and the clock skew allowed ahead).
WINDOW = 300.0
SKEW = 30.0
#: The rule of every refusal of this module.
RULE = "authentication"


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    """A short, stable name of a public key: ``SHA256:`` and 16 hex digits of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_from_text(text: str) -> ed25519.Ed25519PublicKey:
    """An OpenSSH ``ssh-ed25519 AAAA...`` public key (ValueError otherwise)."""
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except UnsupportedAlgorithm:
        raise ValueError("not an OpenSSH public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


def request_message(req: SiteRequest, nonce: str, when: float, key: str) -> bytes:
    """What a researcher signs of a request (everything a site acts on)."""
    binding = request_binding(req.step, req.dataset, req.where, req.params)
    secure = request_binding("secure", None, None, req.secure) if req.secure is not None else None
    return json.dumps(
        [
            SCHEME,
            key,
            req.step,
            req.dataset,
            req.where,
            req.who,
            req.query_id,
            binding,
            secure,
            nonce,
            repr(float(when)),
        ],
        sort_keys=True,
        default=str,
    ).encode()


@dataclass(frozen=True)
class ResearcherKey:
    """A researcher's signing key (Ed25519, OpenSSH form as ``fedhem keys`` or ``ssh-keygen -t
    ed25519`` writes it)."""

    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: str | Path) -> ResearcherKey:
        try:
            key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
        except FileNotFoundError:
            raise SchemaError(f"researcher key file not found: {Path(path).name}") from None
        except (ValueError, TypeError):
            raise SchemaError(
                "the researcher key file must hold an Ed25519 private key in OpenSSH form"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SchemaError("the researcher key file must hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def generate(cls) -> ResearcherKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def id(self) -> str:
        return key_id(self.private_key.public_key())

    @property
    def public_text(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """The private key (mode 600) at ``path`` and the public one at ``path.pub``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        private = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(private)
        public = path.with_name(path.name + ".pub")
        public.write_text(self.public_text + "\n")
        return path, public

    def sign(self, req: SiteRequest) -> dict[str, Any]:
        """The ``auth`` block of ``req``: key id, a fresh nonce, the time and the signature."""
        nonce, when = secrets.token_hex(16), time.time()
        signature = self.private_key.sign(request_message(req, nonce, when, self.id))
        return {
            "key": self.id,
            "nonce": nonce,
            "time": when,
            "signature": base64.b64encode(signature).decode(),
        }


class AuthError(ValueError):
    """Why a request's signature is not accepted (no value of the request is quoted)."""


class Researchers:
    """The researchers a site accepts (name → public key), and the nonces it has seen."""

    def __init__(self, keys: dict[str, str], started: float | None = None) -> None:
        self.by_id: dict[str, tuple[str, ed25519.Ed25519PublicKey]] = {}
        for name, text in keys.items():
            public = public_key_from_text(text)
            self.by_id[key_id(public)] = (name, public)
        self.started = time.time() if started is None else started
        #: nonces taken, oldest first (a request older than the window is refused anyway)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, req: SiteRequest, now: float | None = None) -> tuple[str, str]:
        """The researcher's name (as the site knows the key) and key id; AuthError otherwise."""
        auth = getattr(req, "auth", None)
        if auth is None:
            raise AuthError("this site answers signed requests only (no researcher key was used)")
        if (
            not isinstance(auth, dict)
            or set(auth) != {"key", "nonce", "time", "signature"}
            or not all(isinstance(auth[k], str) for k in ("key", "nonce", "signature"))
            or isinstance(auth["time"], bool)
            or not isinstance(auth["time"], int | float)
            or len(auth["nonce"]) != 32
        ):
            raise AuthError("malformed request signature")
        known = self.by_id.get(auth["key"])
        if known is None:
            raise AuthError("the request is signed with a key this site does not accept")
        name, public = known
        try:
            signature = base64.b64decode(auth["signature"].encode(), validate=True)
            message = request_message(req, auth["nonce"], float(auth["time"]), auth["key"])
            public.verify(signature, message)
        except (InvalidSignature, ValueError, TypeError):
            raise AuthError("the request's signature does not match it") from None
        now = time.time() if now is None else now
        when = float(auth["time"])
        if not (max(now - WINDOW, self.started - SKEW) <= when <= now + SKEW):
            raise AuthError("the request is too old (or signed before this site started)")
        while self._seen and next(iter(self._seen.values())) < now - WINDOW - SKEW:
            self._seen.popitem(last=False)  # what the window refuses anyway (kept longer if
            # an older one arrived late: never forgotten early)
        if auth["nonce"] in self._seen:
            raise AuthError("this request was sent before (a replay)")
        self._seen[auth["nonce"]] = when
        return name, auth["key"]


# -- sites sign their replies ------------------------------------------------------------------
REPLY_SCHEME = "fedhem-reply/1"


def reply_message(reply: SiteReply, req: SiteRequest) -> bytes:
    """What a site signs of a reply: its site, status and every field (a digest), bound to the
    request it answers (step, dataset, filter, parameters, researcher, query, secure block and
    the researcher's nonce): an old reply cannot be passed off as the answer to another request."""
    body = {
        "payload": reply.payload,
        "suppressions": reply.suppressions,
        "notes": reply.notes,
        "error": reply.error,
        "budget": reply.budget,
    }
    nonce = req.auth.get("nonce") if isinstance(req.auth, dict) else None
    return json.dumps(
        [
            REPLY_SCHEME,
            reply.site,
            reply.status,
            request_binding("reply", None, None, body),
            request_binding(req.step, req.dataset, req.where, req.params),
            request_binding("secure", None, None, req.secure),
            req.who,
            req.query_id,
            nonce,
        ],
        default=str,
    ).encode()


def sign_reply(private_key: ed25519.Ed25519PrivateKey, reply: SiteReply, req: SiteRequest) -> str:
    return base64.b64encode(private_key.sign(reply_message(reply, req))).decode()


def reply_is_signed(public: ed25519.Ed25519PublicKey, reply: SiteReply, req: SiteRequest) -> bool:
    """Whether ``reply`` carries its site's signature for ``req``."""
    if not isinstance(reply.signature, str) or len(reply.signature) > 256:
        return False
    try:
        public.verify(
            base64.b64decode(reply.signature.encode(), validate=True), reply_message(reply, req)
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
