"""A site's identity key (Ed25519): it signs the site's key bundles for secure sums.

Side: site. The private key never leaves the site; the other sites know the public key from their
rosters (:mod:`fedhem_kernel.protocol.roster`). A deployed site reads its key from the file its
config names (``[site] identity_key``, OpenSSH form as ``ssh-keygen -t ed25519`` writes it); an
embedded site gets a fresh one when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.primitives.asymmetric_ed25519 import (
    generate_key_pair,
    load_private_key,
    sign_message,
)

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.protocol.roster import public_key_text


@dataclass(frozen=True)
class SiteIdentity:
    """A site's name and identity key pair."""

    name: str
    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> SiteIdentity:
        """A fresh identity (embedded sites and tests)."""
        return cls(name, generate_key_pair()[0])

    @classmethod
    def from_file(cls, name: str, path: Path) -> SiteIdentity:
        """The identity in an OpenSSH private key file (a SchemaError naming the site otherwise)."""
        try:
            key = load_private_key(Path(path))
        except FileNotFoundError:
            raise SchemaError(
                f"identity key file not found: {Path(path).name}", site=name
            ) from None
        except (ValueError, TypeError):
            raise SchemaError(
                "the identity key file must hold an Ed25519 private key in OpenSSH form", site=name
            ) from None
        return cls(name, key)

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_text(self) -> str:
        return public_key_text(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return sign_message(self.private_key, message)
