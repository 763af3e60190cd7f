"""Install the ``fedhem`` kernelspec (``python -m fedhem_kernel install``).

The wheel already ships the kernelspec as shared data (``share/jupyter/kernels/fedhem``), with
``argv[0] = "python"``. Installing it explicitly writes the running interpreter into ``argv[0]``
so that Jupyter starts the kernel with the environment FedHem is installed in, whichever
``python`` is first on ``PATH``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "fedhem"
_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what jupyter_client accepts
KERNELSPEC_DIR = Path(__file__).resolve().parent.parent / "data" / "kernelspec"


def install(
    *,
    user: bool = False,
    prefix: str | Path | None = None,
    name: str = KERNEL_NAME,
    display_name: str | None = None,
    executable: str | None = None,
) -> str:
    """Install the kernelspec and return the directory it was installed into.

    ``user=True`` installs for the current user; ``prefix`` under ``PREFIX/share/jupyter/kernels``
    (``prefix=sys.prefix`` is ``--sys-prefix``); neither is a system-wide install. ``executable``
    (default ``sys.executable``) is the interpreter the kernel runs with.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if user and prefix is not None:
        raise ValueError("choose either user=True or a prefix, not both")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid kernel name {name!r}: use letters, digits, '.', '_' and '-' only"
        )
    source = KERNELSPEC_DIR / "kernel.json"
    spec = json.loads(source.read_text(encoding="utf-8"))
    argv = list(spec["argv"])
    if argv and argv[0] in ("python", "python3"):
        argv[0] = executable or sys.executable
    spec["argv"] = argv
    if display_name:
        spec["display_name"] = display_name

    with tempfile.TemporaryDirectory(prefix="fedhem-kernelspec-") as tmp:
        staged = Path(tmp) / name
        # Everything shipped with the spec (kernel.json, logos, ...), then the rewritten json.
        shutil.copytree(KERNELSPEC_DIR, staged)
        (staged / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        return KernelSpecManager().install_kernel_spec(
            str(staged),
            kernel_name=name,
            user=user,
            prefix=str(prefix) if prefix is not None else None,
        )
