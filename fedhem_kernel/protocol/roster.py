"""A roster: the sites of a federation and their identity keys (Ed25519, OpenSSH text form).

Side: shared. A site reads its roster from its own config (``[peers]``: the other sites' public
keys, exchanged out of band by the consortium's data stewards) and checks with it that a key bundle
the coordinator forwards really comes from the site it names; in an embedded federation the host
that starts the sites builds it. Signing and verifying are Flower's Ed25519 helpers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.primitives.asymmetric_ed25519 import verify_signature

from fedhem_kernel.errors import SchemaError


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...``: how a roster writes a site's identity key."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def parse_public_key(text: str, site: str) -> ed25519.Ed25519PublicKey:
    """An identity key from its OpenSSH text (a SchemaError naming the site otherwise)."""
    try:
        key = serialization.load_ssh_public_key(str(text).strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SchemaError(
            "a site's identity key must be an Ed25519 public key in OpenSSH form "
            "('ssh-ed25519 AAAA...')",
            site=site,
        )
    return key


class Roster(Mapping[str, ed25519.Ed25519PublicKey]):
    """Site name -> identity key, read-only."""

    def __init__(self, keys: Mapping[str, ed25519.Ed25519PublicKey | str]) -> None:
        self._keys = {
            name: parse_public_key(key, name) if isinstance(key, str) else key
            for name, key in keys.items()
        }

    def __getitem__(self, name: str) -> ed25519.Ed25519PublicKey:
        return self._keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, site: str, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``site``'s over ``message`` (False for a site not listed)."""
        key = self._keys.get(site)
        return key is not None and verify_signature(key, message, signature)

    def to_text(self) -> dict[str, str]:
        return {name: public_key_text(key) for name, key in self._keys.items()}
