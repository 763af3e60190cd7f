"""FedHem: federated haematology analyses in Jupyter. Rows stay at each site; checked aggregates return."""

from fedhem_kernel.errors import (
    DisclosureError,
    FedHemError,
    FilterError,
    ParameterError,
    SchemaError,
)
from fedhem_kernel.federation import Federation, federation_from_env
from fedhem_kernel.privacy.policy import Policy

__version__ = "0.1.0"

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
