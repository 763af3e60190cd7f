"""Command line: ``fedhem ...`` or ``python -m fedhem_kernel ...``.

``install``  install the ``fedhem`` Jupyter kernelspec for this interpreter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhem",
        description="FedHem: federated haematology analyses in Jupyter.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    install = commands.add_parser(
        "install",
        help="install the FedHem Jupyter kernelspec",
        description=(
            "Install the FedHem kernelspec so Jupyter can start the FedHem kernel with this "
            f"interpreter ({sys.executable}). Default: into this environment (--sys-prefix)."
        ),
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", help="install for the current user (~/.local/share/jupyter)"
    )
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help=f"install into this Python environment ({sys.prefix}); the default",
    )
    where.add_argument(
        "--prefix", metavar="PREFIX", help="install into PREFIX/share/jupyter/kernels"
    )
    install.add_argument("--name", default="fedhem", help="kernelspec name (default: %(default)s)")
    install.add_argument(
        "--display-name",
        metavar="NAME",
        help='name shown in Jupyter (default: "FedHem (federated Python)")',
    )
    install.set_defaults(handler=_cmd_install)
    return parser


def _cmd_install(args: argparse.Namespace) -> int:
    from fedhem_kernel.kernel.install import install

    prefix = args.prefix if args.prefix is not None else (None if args.user else sys.prefix)
    try:
        destination = install(
            user=args.user, prefix=prefix, name=args.name, display_name=args.display_name
        )
    except PermissionError as exc:
        print(
            f"fedhem install: permission denied ({exc}); try --user or --prefix PREFIX",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError) as exc:
        print(f"fedhem install: {exc}", file=sys.stderr)
        return 1
    print(f"Installed kernelspec {args.name.lower()!r} in {destination}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``--help`` included)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else 2
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
