"""Command line: ``fedhem ...`` or ``python -m fedhem_kernel ...``.

``install``  install the ``fedhem`` Jupyter kernelspec for this interpreter.
``run``      execute a notebook headlessly with parameters against a federation.
``demo``     write the demo federation as site folders and check that it answers.
``serve-sites``  host a federation's sites in this process, answering Flower messages on
             stdin/stdout (what ``Federation.from_config(..., isolation="process")`` starts).
``audit verify``  check a site's audit log (its hash chain): exit 0 intact, 1 naming the first bad
             entry.
``keys``     make a key pair: Ed25519 (a researcher's signing key, or a site's identity key), or
             ECDSA P-384 for Flower's SuperNode authentication (``--kind node``).
``certs``    make a CA and a server certificate for tests and workshops.
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

    run = commands.add_parser(
        "run",
        help="execute a notebook headlessly (papermill-style parameters)",
        description=(
            "Execute NOTEBOOK top to bottom on its kernel and write the executed copy. Values given "
            "with --param go into a cell after the one tagged 'parameters'."
        ),
    )
    run.add_argument("notebook", help="the notebook to run")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter; VALUE is a Python literal (5, 0.5, True, [1, 2]) or else text",
    )
    run.add_argument(
        "-f",
        "--federation",
        metavar="CONFIG",
        help="'demo', 'none' or a federation TOML (default: $FEDHEM_FEDERATION, else demo)",
    )
    run.add_argument(
        "-o", "--output", metavar="PATH", help="executed copy (default: NAME.executed.ipynb)"
    )
    run.add_argument(
        "--kernel", metavar="NAME", help="kernel (default: the notebook's, else fedhem)"
    )
    run.add_argument(
        "--timeout", type=float, default=600, help="seconds per cell (default: %(default)s)"
    )
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser(
        "demo",
        help="write the demo federation (4 synthetic sites) as site folders",
        description=(
            "Write DIR/federation.toml and one folder per demo site (site.toml, CSV datasets, audit "
            "log), then check that every site answers. Use it with FEDHEM_FEDERATION=DIR/federation.toml."
        ),
    )
    demo.add_argument("--dir", default="~/.fedhem/demo", help="where (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=2026, help="synthetic data seed")
    demo.set_defaults(handler=_cmd_demo)

    serve = commands.add_parser(
        "serve-sites",
        help="host a federation's sites in this process (stdin/stdout, for isolation='process')",
        description=(
            "Load the sites of CONFIG (a federation TOML, or 'demo') in this process and answer "
            "framed Flower messages on stdin/stdout until stdin closes. Started by "
            "Federation.from_config(..., isolation='process') and Federation.demo(isolation="
            "'process'): the researcher's process then holds no site data."
        ),
    )
    serve.add_argument("config", help="a federation TOML, or 'demo'")
    serve.add_argument("--seed", type=int, default=2026, help="demo data seed")
    serve.set_defaults(handler=_cmd_serve_sites)

    audit = commands.add_parser(
        "audit",
        help="check a site's audit log",
        description="Check a site's audit log: its hash chain and head (site/audit.py).",
    )
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    check = audit_commands.add_parser(
        "verify",
        help="exit 0 when the chain is intact, 1 naming the first bad entry",
        description=(
            "Verify the audit log the site's config names: every entry's hash, the chain of "
            "hashes and numbers, and the head. Exit 0 when intact; 1, naming the first bad "
            "entry, when an entry was altered, removed or reordered; 2 for a config without "
            "an audit log."
        ),
    )
    check.add_argument("--config", required=True, metavar="SITE_TOML", help="the site's config")
    check.set_defaults(handler=_cmd_audit_verify)

    keys = commands.add_parser(
        "keys",
        help="make an Ed25519 key pair (OpenSSH form)",
        description=(
            "Write a new Ed25519 private key to OUT (mode 600) and its public key to OUT.pub, "
            "in OpenSSH form: a researcher's signing key (Federation.from_config(..., key=OUT); "
            "the sites list OUT.pub under [researchers]) or a site's identity key."
        ),
    )
    keys.add_argument("--out", required=True, metavar="OUT", help="the private key file")
    keys.add_argument("--force", action="store_true", help="overwrite an existing key")
    keys.add_argument(
        "--kind",
        choices=("ed25519", "node"),
        default="ed25519",
        help="ed25519: a researcher's or a site's identity key (default); node: ECDSA P-384 "
        "for Flower's SuperNode authentication",
    )
    keys.set_defaults(handler=_cmd_keys)

    certs = commands.add_parser(
        "certs",
        help="make a CA and a server certificate (tests and workshops)",
        description=(
            "Write DIR/ca.crt, DIR/ca.key, DIR/server.pem and DIR/server.key: a CA and a server "
            "certificate it signs for the given hosts (ECDSA P-384, valid a year). For tests and "
            "workshops: a hospital brings its own certificates."
        ),
    )
    certs.add_argument("--out", required=True, metavar="DIR", help="where to write them")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="a name or address the server is reached at (repeatable; default: 127.0.0.1 and "
        "localhost)",
    )
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(handler=_cmd_certs)
    return parser


def _cmd_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhem_kernel.protocol.certs import make_certificates

    out = Path(args.out).expanduser()
    existing = [n for n in ("ca.crt", "ca.key", "server.pem", "server.key") if (out / n).exists()]
    if existing and not args.force:
        print(f"fedhem certs: {out / existing[0]} exists (use --force)", file=sys.stderr)
        return 2
    files = make_certificates(out, args.host or None)
    print(f"CA: {files.ca_cert}\nserver certificate: {files.server_cert} (key {files.server_key})")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhem_kernel.protocol.auth import ResearcherKey

    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        print(f"fedhem keys: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    if args.kind == "node":
        from fedhem_kernel.protocol.certs import make_node_key

        private, public = make_node_key(out)
        print(f"private key: {private}\npublic key:  {public}")
        return 0
    key = ResearcherKey.generate()
    private, public = key.write(out)
    print(f"private key: {private}\npublic key:  {public}\n{key.public_text}  ({key.id})")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedhem_kernel.errors import FedHemError
    from fedhem_kernel.site.audit import verify
    from fedhem_kernel.site.config import SiteConfig

    try:
        config = SiteConfig.from_toml(args.config)
    except FedHemError as exc:
        print(f"fedhem audit verify: {exc}", file=sys.stderr)
        return 2
    if config.audit_log is None:
        print(f"fedhem audit verify: site '{config.name}' keeps no audit log", file=sys.stderr)
        return 2
    verdict = verify(config.audit_log)
    print(f"{config.audit_log}: {verdict}")
    return 0 if verdict.ok else 1


def _cmd_serve_sites(args: argparse.Namespace) -> int:
    from fedhem_kernel import node

    if args.config == "demo":
        return node.serve(lambda: ("demo", node.demo_configs(args.seed)))
    return node.serve(lambda: node.federation_configs(args.config))


def _cmd_run(args: argparse.Namespace) -> int:
    from fedhem_kernel.errors import FedHemError
    from fedhem_kernel.runner import NotebookRunError, parse_param, run_notebook

    try:
        params = dict(parse_param(p) for p in args.param)
        output = run_notebook(
            args.notebook,
            args.output,
            params=params,
            federation=args.federation,
            kernel_name=args.kernel,
            timeout=args.timeout,
        )
    except NotebookRunError as exc:
        print(f"fedhem run: {exc}\nexecuted copy (with the error): {exc.output}", file=sys.stderr)
        return 1
    except FedHemError as exc:
        print(f"fedhem run: {exc}", file=sys.stderr)
        return 2
    print(f"Executed {args.notebook} -> {output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedhem_kernel.demo.files import write_demo_federation
    from fedhem_kernel.errors import FedHemError
    from fedhem_kernel.federation import Federation

    try:
        config = write_demo_federation(args.dir, seed=args.seed)
        with Federation.from_config(config) as fed:
            sites = fed.sites
    except (FedHemError, OSError) as exc:
        print(f"fedhem demo: {exc}", file=sys.stderr)
        return 1
    online = sites[sites["status"] == "online"]
    print(f"Demo federation in {config} ({len(online)}/{len(sites)} sites answer)")
    return 0 if len(online) == len(sites) else 1


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
