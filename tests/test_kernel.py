"""The FedHem Jupyter kernel: kernelspec install, a real kernel through jupyter_client, %fed.

The kernels are real processes started from a kernelspec installed into a temporary prefix by
``python -m fedhem_kernel install --prefix``, so these tests also check that the installed spec
starts the right interpreter.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from fedhem_kernel.__main__ import main

pytestmark = pytest.mark.slow

DEMO_SITES = ("karolinska", "charite", "hopital_st_louis", "policlinico_bari")
TIMEOUT = 30  # seconds, per request; a hung kernel fails the test instead of hanging CI


# -- helpers --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Everything one execute request produced."""

    status: str = ""
    stdout: str = ""
    stderr: str = ""
    results: list[str] = field(default_factory=list)  # text/plain of results and displays
    ename: str = ""
    evalue: str = ""

    @property
    def text(self) -> str:
        return "\n".join([self.stdout, self.stderr, *self.results, self.ename, self.evalue])


def run(kc: BlockingKernelClient, code: str) -> Outcome:
    out = Outcome()

    def hook(msg: dict) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                out.stdout += content["text"]
            else:
                out.stderr += content["text"]
        elif kind in ("execute_result", "display_data"):
            out.results.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            out.ename, out.evalue = content["ename"], content["evalue"]

    reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=hook, allow_stdin=False)
    out.status = reply["content"]["status"]
    if out.status == "error" and not out.ename:
        out.ename, out.evalue = reply["content"]["ename"], reply["content"]["evalue"]
    return out


def install_spec(prefix: Path, *extra: str) -> Path:
    assert main(["install", "--prefix", str(prefix), *extra]) == 0
    return prefix / "share" / "jupyter" / "kernels"


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fedhem kernelspec (as installed by the CLI) and a plain IPython one, in a temp prefix."""
    kernels = install_spec(tmp_path_factory.mktemp("prefix"))
    plain = kernels / "plain-ipython"
    plain.mkdir()
    (plain / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "plain IPython",
                "language": "python",
                "kernel_protocol_version": "5.5",
                "metadata": {"supported_encryption": ["curve"]},
            }
        )
    )
    return kernels


def start_kernel(
    kernels: Path, name: str, workdir: Path, federation: str = "demo"
) -> tuple[KernelManager, BlockingKernelClient]:
    km = KernelManager(
        kernel_name=name,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        connection_file=str(workdir / f"kernel-{name}.json"),
        # CurveZMQ, as the kernelspec declares; 'required' fails the start if it cannot be used
        transport_encryption="required" if zmq.has("curve") else "auto",
    )
    env = dict(os.environ, FEDHEM_FEDERATION=federation, IPYTHONDIR=str(workdir / "ipython"))
    km.start_kernel(env=env, cwd=str(workdir))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
    except Exception:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)  # shutdown_request first: the kernel closes `fed` itself
    assert not km.is_alive()


@pytest.fixture(scope="module")
def kc(
    kernels_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BlockingKernelClient]:
    """A FedHem kernel with the demo federation."""
    km, client = start_kernel(kernels_dir, "fedhem", tmp_path_factory.mktemp("fedhem"))
    yield client
    stop_kernel(km, client)


# -- install / command line ---------------------------------------------------------------------
def test_install_into_prefix(tmp_path: Path) -> None:
    spec_dir = install_spec(tmp_path) / "fedhem"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    interpreter = Path(spec["argv"][0])
    assert interpreter.is_absolute() and interpreter.is_file() and os.access(interpreter, os.X_OK)
    assert spec["argv"][1:] == ["-m", "fedhem_kernel.kernel", "-f", "{connection_file}"]
    assert spec["display_name"] == "FedHem (federated Python)"
    assert spec["kernel_protocol_version"] == "5.5"
    assert spec["metadata"]["supported_encryption"] == ["curve"]
    # jupyter_client finds it under that prefix
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    assert ksm.get_kernel_spec("fedhem").display_name == "FedHem (federated Python)"


def test_install_name_and_display_name(tmp_path: Path) -> None:
    kernels = install_spec(tmp_path, "--name", "fedhem-test", "--display-name", "FedHem test")
    spec = json.loads((kernels / "fedhem-test" / "kernel.json").read_text())
    assert spec["display_name"] == "FedHem test"
    assert spec["argv"][0] == sys.executable


def test_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "install" in capsys.readouterr().out
    assert main([]) == 2  # no subcommand: help, non-zero
    assert main(["install", "--prefix", str(tmp_path), "--name", "no/slashes"]) == 1
    assert "invalid kernel name" in capsys.readouterr().err
    assert main(["install", "--user", "--prefix", str(tmp_path)]) == 2  # mutually exclusive


# -- the FedHem kernel ----------------------------------------------------------------------------
def test_kernel_info(kc: BlockingKernelClient) -> None:
    reply = kc.kernel_info(reply=True, timeout=TIMEOUT)["content"]
    assert reply["implementation"] == "fedhem"
    assert reply["language_info"]["name"] == "python"
    assert "debugger" in reply["supported_features"]  # still IPythonKernel's debugger
    assert "FedHem" in reply["banner"]


def test_namespace_has_fh_and_fed(kc: BlockingKernelClient) -> None:
    out = run(kc, "print(fh.__name__, type(fed).__name__, fed.name)")
    assert out.status == "ok", out.text
    assert out.stdout.split() == ["fedhem_kernel", "Federation", "demo"]
    assert out.stderr == ""  # no start-up warning when the federation is fine


def test_fed_sites(kc: BlockingKernelClient) -> None:
    out = run(kc, "fed.sites")
    assert out.status == "ok", out.text
    for site in DEMO_SITES:
        assert site in out.results[0]


def test_magic_sites_and_catalog(kc: BlockingKernelClient) -> None:
    sites = run(kc, "%fed sites")
    assert sites.status == "ok", sites.text
    assert all(site in sites.results[0] for site in DEMO_SITES)
    catalog = run(kc, "%fed catalog aml")
    assert catalog.status == "ok", catalog.text
    assert "aml" in catalog.results[0] and "levels" in catalog.results[0]
    names = run(kc, "df = %fed catalog aml\nprint(sorted(set(df['column'])))")
    assert "os_months" in names.text, names.text
    # magics return the same DataFrame the API does
    same = run(kc, "df = %fed catalog aml\nprint(df.equals(fed.catalog('aml')))")
    assert same.stdout.strip() == "True", same.text


def test_magic_user_errors(kc: BlockingKernelClient) -> None:
    bogus = run(kc, "%fed bogus")
    assert (bogus.status, bogus.ename) == ("error", "UsageError")
    assert "unknown subcommand 'bogus'" in bogus.evalue and "%fed catalog" in bogus.evalue
    empty = run(kc, "%fed")
    assert empty.ename == "UsageError"
    extra = run(kc, "%fed sites now")
    assert extra.ename == "UsageError"
    no_dataset = run(kc, "%fed catalog no_such_dataset")
    assert no_dataset.ename == "UsageError"
    assert "no_such_dataset" in no_dataset.evalue and "aml" in no_dataset.evalue


def test_connect_missing_file_keeps_fed(kc: BlockingKernelClient) -> None:
    out = run(kc, "%fed connect /nonexistent.toml")
    assert (out.status, out.ename) == ("error", "UsageError")
    assert "/nonexistent.toml" in out.evalue and "does not exist" in out.evalue
    still = run(kc, "print(fed.name)")
    assert still.stdout.strip() == "demo"


def test_connect_replaces_fed(kc: BlockingKernelClient, tmp_path: Path) -> None:
    for site in ("site_a", "site_b"):
        (tmp_path / f"{site}.csv").write_text("age,os_months\n61,12.5\n70,3.0\n")
    config = tmp_path / "my federation.toml"
    config.write_text(
        '[federation]\nname = "two_sites"\n'
        '[sites.site_a.datasets.aml]\npath = "site_a.csv"\n'
        '[sites.site_b.datasets.aml]\npath = "site_b.csv"\n'
    )
    try:
        out = run(kc, f'old = fed\n%fed connect "{config}"')
        assert out.status == "ok", out.text
        assert "two_sites" in out.stdout and "site_a, site_b" in out.stdout
        sites = run(kc, "%fed sites")
        assert "site_a" in sites.results[0] and "karolinska" not in sites.results[0]
        # the connected sites run in a site host process: the kernel loaded none of their data
        where = run(
            kc,
            "import gc\nfrom fedhem_kernel.site.executor import SiteExecutor\n"
            "print(type(fed.coordinator.grid.transport).__name__, sorted({o.name for o in "
            "gc.get_objects() if isinstance(o, SiteExecutor)} & {'site_a', 'site_b'}))",
        )
        assert where.stdout.strip() == "SiteProcess []", where.text
    finally:
        run(kc, "fed = fh.Federation.demo()")


def test_completion(kc: BlockingKernelClient) -> None:
    reply = kc.complete("fed.cata", reply=True, timeout=TIMEOUT)["content"]
    assert "catalog" in reply["matches"]


# -- other kernels --------------------------------------------------------------------------------
def test_broken_federation_does_not_crash_kernel(kernels_dir: Path, tmp_path: Path) -> None:
    km, client = start_kernel(kernels_dir, "fedhem", tmp_path, "/nonexistent/federation.toml")
    try:
        first = run(client, "print(fed)")
        assert first.status == "ok", first.text
        assert first.stdout.strip() == "None"
        assert "FedHem warning" in first.stderr
        assert "/nonexistent/federation.toml" in first.stderr
        second = run(client, "print('again')")
        assert second.stderr == ""  # the warning is shown once
        sites = run(client, "%fed sites")
        assert sites.ename == "UsageError" and "%fed connect" in sites.evalue
    finally:
        stop_kernel(km, client)


def test_magics_in_plain_ipython_kernel(kernels_dir: Path, tmp_path: Path) -> None:
    km, client = start_kernel(kernels_dir, "plain-ipython", tmp_path)
    try:
        assert kc_implementation(client) == "ipython"
        load = run(client, "%load_ext fedhem_kernel.kernel.magics")
        assert load.status == "ok", load.text
        catalog = run(client, "%fed catalog aml")  # no `fed` yet: built from FEDHEM_FEDERATION
        assert catalog.status == "ok", catalog.text
        assert "os_months" in catalog.results[0]
        assert run(client, "print(type(fed).__name__)").stdout.strip() == "Federation"
        assert run(client, "%fed bogus").ename == "UsageError"
    finally:
        stop_kernel(km, client)


def kc_implementation(client: BlockingKernelClient) -> str:
    return client.kernel_info(reply=True, timeout=TIMEOUT)["content"]["implementation"]
