"""The FedHem Jupyter kernel: IPython with ``fh``, a ready federation ``fed`` and ``%fed``.

It subclasses ipykernel's ``IPythonKernel`` and keeps its shell, so widgets, completion, the
debugger and everything else IPython does keep working. At start it

* loads the ``fedhem_kernel.kernel.magics`` extension (``%fed sites``, ``%fed catalog``, ...),
* puts ``fh`` (the ``fedhem_kernel`` package) into the user namespace,
* puts ``fed = fh.federation_from_env()`` into the user namespace (``FEDHEM_FEDERATION`` =
  ``demo`` (default), ``none`` or the path of a federation TOML).

Building the federation must never stop the kernel from starting: if it fails, ``fed`` is
``None``, the reason goes to the kernel log and is printed (stderr) in the output of the first
cell the user runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import List

import fedhem_kernel as fh

MAGICS_EXTENSION = "fedhem_kernel.kernel.magics"


def _show_fedhem_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset=None):
    shell.showtraceback((etype, value, None), tb_offset=0, exception_only=True)
    return None


class FedHemKernel(IPythonKernel):
    """IPython kernel with the FedHem namespace (``fh``, ``fed``) and ``%fed`` magics."""

    implementation = "fedhem"
    implementation_version = fh.__version__
    # language_info is IPythonKernel's (Python): notebooks stay plain Python notebooks.

    help_links = List(
        [
            {
                "text": "Python Reference",
                "url": f"https://docs.python.org/{sys.version_info[0]}.{sys.version_info[1]}",
            },
            {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
            {"text": "pandas Reference", "url": "https://pandas.pydata.org/docs/"},
        ]
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Shown once, in the output of the first non-silent execution (see do_execute).
        self._startup_warning: str | None = None
        if self.shell is not None:
            self._init_fedhem_namespace()

    @property
    def banner(self) -> str:  # type: ignore[override]
        base = super().banner or ""
        return (
            f"{base}\nFedHem {fh.__version__}: `fh` is the package, `fed` your federation "
            "(FEDHEM_FEDERATION); try `%fed sites`, `%fed catalog DATASET`, `%fed connect PATH`.\n"
        )

    # -- start-up -----------------------------------------------------------------------------
    def _init_fedhem_namespace(self) -> None:
        shell = self.shell
        assert shell is not None
        problems: list[str] = []
        try:
            shell.extension_manager.load_extension(MAGICS_EXTENSION)
        except Exception as exc:  # never keep the kernel from starting
            self.log.warning("FedHem: could not load %s", MAGICS_EXTENSION, exc_info=True)
            problems.append(
                f"the %fed magics are unavailable ({type(exc).__name__}: {exc}); "
                f"try `%load_ext {MAGICS_EXTENSION}`"
            )

        fed = None
        setting = os.environ.get("FEDHEM_FEDERATION", "demo")
        try:
            fed = fh.federation_from_env()
        except Exception as exc:  # never keep the kernel from starting
            # A FedHemError is a configuration problem with a clear message; anything else is
            # unexpected and gets its traceback in the kernel log.
            self.log.warning(
                "FedHem: could not set up the federation (FEDHEM_FEDERATION=%r): %s",
                setting,
                exc,
                exc_info=not isinstance(exc, fh.FedHemError),
            )
            problems.append(
                f"could not set up the federation from FEDHEM_FEDERATION={setting!r} "
                f"({type(exc).__name__}: {exc}). `fed` is None: fix FEDHEM_FEDERATION and "
                "restart the kernel, or run `%fed connect PATH/TO/federation.toml`"
            )

        # interactive=False: like pylab's `np`, the names are there but %who does not list them.
        shell.push({"fh": fh, "fed": fed}, interactive=False)
        # A FedHem error (a refusal, a bad column, a malformed filter) is an answer, not a crash:
        # show its message (site, dataset, column, rule) without an internal traceback.
        shell.set_custom_exc((fh.FedHemError,), _show_fedhem_error)
        if problems:
            self._startup_warning = "\n".join(f"FedHem warning: {p}" for p in problems)

    # -- overrides ------------------------------------------------------------------------------
    # Same signature as IPythonKernel.do_execute: ipykernel inspects it to pass cell_meta/cell_id.
    async def do_execute(
        self,
        code,
        silent,
        store_history=True,
        user_expressions=None,
        allow_stdin=False,
        *,
        cell_meta=None,
        cell_id=None,
    ):
        if self._startup_warning is not None and not silent:
            warning, self._startup_warning = self._startup_warning, None
            print(warning, file=sys.stderr, flush=True)
        return await super().do_execute(
            code,
            silent,
            store_history=store_history,
            user_expressions=user_expressions,
            allow_stdin=allow_stdin,
            cell_meta=cell_meta,
            cell_id=cell_id,
        )

    def do_shutdown(self, restart):
        if self.shell is not None:
            fed = self.shell.user_ns.get("fed")
            if isinstance(fed, fh.Federation):
                try:
                    fed.close()
                except Exception:
                    self.log.warning("FedHem: closing the federation failed", exc_info=True)
        return super().do_shutdown(restart)
