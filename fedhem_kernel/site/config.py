"""Site configuration from TOML: datasets, column types, policy and audit log location.

```toml
[site]
name = "karolinska"
audit_log = "audit/karolinska.jsonl"     # relative to this file; optional
data_root = "data"                        # where image/mask paths point; default: this file's folder
identity_key = "keys/karolinska.key"      # Ed25519, OpenSSH form; optional (no secure sums without)
state_dir = "state"                       # release ledgers (one file per dataset); optional: memory

[peers]                                   # the other sites' identity keys (for secure sums)
charite = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."

[researchers]                             # optional: then only requests signed by these keys
alice = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."   # (fedhem keys --out alice.key)

[policy]                                  # optional; defaults are fh.Policy()
min_cell_count = 5
time_resolution = "1 month"

[datasets.aml]
path = "aml.csv"                          # CSV, TSV or Parquet, relative to this file
[datasets.aml.columns]                    # optional declared types; others are inferred
age = "float"
os_months = { type = "float", unit = "months" }
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.auth import public_key_from_text


@dataclass(frozen=True)
class DatasetDecl:
    name: str
    source: Any  # DataFrame or path
    columns: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteConfig:
    name: str
    datasets: dict[str, DatasetDecl]
    policy: Policy = field(default_factory=Policy)
    audit_log: Path | None = None
    base_dir: Path | None = None
    data_root: Path | None = None  # image and mask paths are relative to it (default: base_dir)
    identity_key: Path | None = None  # the site's Ed25519 identity key file (secure sums)
    state_dir: Path | None = None  # the site's release ledgers (None: kept in memory)
    peers: Mapping[str, str] = field(default_factory=dict)  # other sites' identity keys
    #: The researchers this site answers (name → Ed25519 public key); empty: unsigned requests
    #: are answered (the embedded federation), else only requests signed by one of these keys.
    researchers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base_dir: Path | None = None, name: str | None = None
    ) -> SiteConfig:
        site_table = dict(data.get("site", {}))
        site_name = site_table.get("name", name)
        if not isinstance(site_name, str) or not site_name.isidentifier():
            raise SchemaError("a site needs a name that is an identifier ([site] name = ...)")
        unknown = set(data) - {"site", "policy", "datasets", "config", "peers", "researchers"}
        if unknown:
            raise SchemaError(f"unknown tables {sorted(unknown)} in site config", site=site_name)
        policy = Policy.from_dict(data.get("policy", {}))
        datasets: dict[str, DatasetDecl] = {}
        for ds_name, table in dict(data.get("datasets", {})).items():
            if "path" not in table:
                raise SchemaError("dataset needs a 'path'", site=site_name, dataset=ds_name)
            datasets[ds_name] = DatasetDecl(ds_name, table["path"], dict(table.get("columns", {})))
        unknown = set(site_table) - {"name", "audit_log", "data_root", "identity_key", "state_dir"}
        if unknown:
            raise SchemaError(f"unknown [site] settings {sorted(unknown)}", site=site_name)
        peers = data.get("peers", {})
        if not isinstance(peers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in peers.items()
        ):
            raise SchemaError("[peers] maps site names to identity keys (text)", site=site_name)
        if site_name in peers:
            raise SchemaError("[peers] lists the other sites, not this one", site=site_name)
        researchers = data.get("researchers", {})
        if not isinstance(researchers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in researchers.items()
        ):
            raise SchemaError("[researchers] maps names to public keys (text)", site=site_name)
        for who, text in researchers.items():
            try:
                public_key_from_text(text)
            except ValueError:
                raise SchemaError(
                    f"[researchers] {who}: not an OpenSSH Ed25519 public key", site=site_name
                ) from None
        audit_path = _relative_to(site_table.get("audit_log"), base_dir)
        data_root = _relative_to(site_table.get("data_root"), base_dir)
        identity_key = _relative_to(site_table.get("identity_key"), base_dir)
        state_dir = _relative_to(site_table.get("state_dir"), base_dir)
        return cls(
            site_name,
            datasets,
            policy,
            audit_path,
            base_dir,
            data_root,
            identity_key=identity_key,
            peers=dict(peers),
            state_dir=state_dir,
            researchers=dict(researchers),
        )

    @classmethod
    def from_toml(cls, path: str | Path, *, name: str | None = None) -> SiteConfig:
        path = Path(path)
        data = read_toml(path, "site config", site=name)
        return cls.from_mapping(data, base_dir=path.parent, name=name)


def _relative_to(value: str | None, base_dir: Path | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def read_toml(path: Path, what: str, *, site: str | None = None) -> dict[str, Any]:
    """A config file as a dict, or a SchemaError saying which file is missing or malformed."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SchemaError(f"{what} not found: {path.name}", site=site) from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{what} is not valid TOML ({exc})", site=site) from None
