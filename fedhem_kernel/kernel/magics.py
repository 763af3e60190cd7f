"""``%fed``: a thin line magic over the federation in the user namespace (``fed``).

The FedHem kernel loads this extension itself; in any other IPython kernel run
``%load_ext fedhem_kernel.kernel.magics``. Subcommands call the same Python API you would:

``%fed sites``              ``fed.sites``
``%fed catalog [DATASET]``  ``fed.catalog(DATASET)``
``%fed connect PATH``       ``fed = fh.Federation.from_config(PATH, isolation="process")``: the sites
                           run in a site host process, never in the kernel (closes the previous
                           ``fed``)

``sites`` and ``catalog`` return the DataFrame, so ``df = %fed catalog aml`` works too. If the
namespace has no ``fed`` yet (plain IPython), it is created with ``fh.federation_from_env()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.utils.process import arg_split

import fedhem_kernel as fh

USAGE = """\
%fed sites               sites of the federation and their datasets (fed.sites)
%fed catalog [DATASET]   columns, types and units, for one dataset or all (fed.catalog(...))
%fed connect PATH        fed = fh.Federation.from_config(PATH, isolation="process") (the sites run
                         in their own process, not in this kernel); closes the previous fed"""

SUBCOMMANDS = ("sites", "catalog", "connect")


def _usage_error(message: str) -> UsageError:
    return UsageError(f"{message}\nUsage:\n{USAGE}")


@magics_class
class FedMagics(Magics):
    """The ``%fed`` line magic."""

    @line_magic
    def fed(self, line: str) -> Any:
        """Inspect or switch the federation in ``fed``.

        %fed sites               sites of the federation and their datasets (fed.sites)
        %fed catalog [DATASET]   columns, types and units (fed.catalog(DATASET))
        %fed connect PATH        fed = fh.Federation.from_config(PATH, isolation="process")
        """
        try:
            args = arg_split(line, posix=True)
        except ValueError as exc:  # e.g. an unclosed quote
            raise _usage_error(f"%fed: could not parse {line!r} ({exc})") from None
        if not args or args[0] in ("-h", "--help", "help"):
            if not args:
                raise _usage_error("%fed needs a subcommand.")
            print(f"Usage:\n{USAGE}")
            return None
        command, rest = args[0], args[1:]
        if command == "sites":
            self._no_more(command, rest, 0)
            return self._federation().sites
        if command == "catalog":
            self._no_more(command, rest, 1)
            return self._catalog(rest[0] if rest else None)
        if command == "connect":
            if len(rest) != 1:
                raise _usage_error(
                    "%fed connect needs exactly one PATH to a federation TOML "
                    "(quote it if it contains spaces)."
                )
            self._connect(rest[0])
            return None
        raise _usage_error(
            f"%fed: unknown subcommand {command!r}; choose one of {', '.join(SUBCOMMANDS)}."
        )

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _no_more(command: str, rest: list[str], allowed: int) -> None:
        if len(rest) > allowed:
            extra = " ".join(rest[allowed:])
            raise _usage_error(f"%fed {command}: unexpected argument(s) {extra!r}.")

    def _federation(self) -> fh.Federation:
        ns = self.shell.user_ns
        if "fed" not in ns:
            # Plain IPython after %load_ext: build it the way the FedHem kernel does.
            try:
                ns["fed"] = fh.federation_from_env()
            except fh.FedHemError as exc:
                raise _usage_error(
                    f"could not set up `fed` from FEDHEM_FEDERATION: {exc}. Use %fed connect PATH."
                ) from None
            if ns["fed"] is not None:
                print(f"fed = fh.federation_from_env()  # {ns['fed']!r}")
        fed = ns["fed"]
        if fed is None:
            raise _usage_error(
                "`fed` is None: no federation is connected. Connect one with "
                "%fed connect PATH/TO/federation.toml (or fed = fh.Federation.demo())."
            )
        if not isinstance(fed, fh.Federation):
            raise _usage_error(
                f"`fed` is a {type(fed).__name__}, not an fh.Federation. Reconnect with "
                "%fed connect PATH (or fed = fh.Federation.demo())."
            )
        return fed

    def _catalog(self, dataset: str | None) -> Any:
        fed = self._federation()
        try:
            return fed.catalog(dataset)
        except fh.FedHemError as exc:
            known = ", ".join(self._datasets(fed))
            hint = f" Datasets in this federation: {known}." if known else ""
            raise UsageError(f"%fed catalog: {exc}.{hint}") from None

    @staticmethod
    def _datasets(fed: fh.Federation) -> list[str]:
        try:
            return sorted(set(fed.catalog()["dataset"]))
        except Exception:
            return []

    def _connect(self, raw_path: str) -> None:
        path = Path(os.path.expandvars(os.path.expanduser(raw_path)))
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise UsageError(
                f"%fed connect: {str(path)!r} {what}; give the path of a federation TOML "
                "([sites.NAME] tables). `fed` is unchanged."
            )
        try:
            new = fh.Federation.from_config(path, isolation="process")
        except (fh.FedHemError, OSError) as exc:
            raise UsageError(
                f"%fed connect: could not connect to {str(path)!r}: {exc}. `fed` is unchanged."
            ) from None
        ns = self.shell.user_ns
        old = ns.get("fed")
        ns["fed"] = new
        if isinstance(old, fh.Federation) and old is not new:
            try:
                old.close()
            except Exception as exc:
                print(f"(closing the previous federation failed: {exc})")
        sites = new.sites
        online = int((sites["status"] == "online").sum())
        print(
            f"fed = fh.Federation.from_config({str(path)!r}, isolation='process')\n"
            f"Connected to federation {new.name!r}: {len(sites)} site(s), {online} online: "
            f"{', '.join(sites['site'])}"
        )


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%fed`` (``%load_ext fedhem_kernel.kernel.magics``)."""
    ipython.register_magics(FedMagics)
