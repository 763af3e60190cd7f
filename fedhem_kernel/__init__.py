"""FedHem: federated haematology analyses in Jupyter. Rows stay at each site; checked aggregates return."""

from typing import TYPE_CHECKING, Any

from fedhem_kernel.errors import (
    DisclosureError,
    FedHemError,
    FilterError,
    ParameterError,
    SchemaError,
)

if TYPE_CHECKING:
    from fedhem_kernel.federation import Federation, federation_from_env
    from fedhem_kernel.privacy.policy import Policy

__version__ = "0.1.0"


_LAZY = {
    "Federation": "fedhem_kernel.federation",
    "federation_from_env": "fedhem_kernel.federation",
    "Policy": "fedhem_kernel.privacy.policy",
}


def __getattr__(name: str) -> Any:
    # Importing the package stays cheap (Jupyter server imports it to find the extension); the
    # analysis stack (pandas, scipy, flwr) loads on first use of fh.Federation or fh.Policy.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedhem_kernel' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter server discovers the REST API for the sidebar here (see fedhem_kernel.server)."""
    return [{"module": "fedhem_kernel.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension (for ``jupyter labextension develop``)."""
    return [{"src": "labextension", "dest": "@fedhem/lab"}]


__all__ = [
    "DisclosureError",
    "FedHemError",
    "Federation",
    "FilterError",
    "ParameterError",
    "Policy",
    "SchemaError",
    "federation_from_env",
]
