"""The JupyterLab sidebar (@fedhem/lab) ships prebuilt: installed, in the wheel, and usable without Node.

Needs the extension built (`make extension`, which `make env`/`make test` run). Builds a real wheel
from this checkout, installs it into a throw-away prefix and asks Jupyter what it sees there with no
`node` anywhere on PATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABEXT = ROOT / "fedhem_kernel" / "labextension"
EXT_NAME = "@fedhem/lab"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(args: list[str | Path], env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run a command, fail the test with its output if it fails; return stdout+stderr without colours."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{out}"
    return out


# --ignore-installed: without it, `pip install --prefix` uninstalls fedhem-kernel from this env.
PIP_PREFIX_INSTALL = [sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed"]
PIP_PREFIX_INSTALL += ["--quiet", "--prefix"]


def venv_install() -> str:
    """Version and location of fedhem-kernel as this environment's Python imports it."""
    code = (
        "import importlib.metadata as m, fedhem_kernel; "
        "print(m.version('fedhem-kernel'), fedhem_kernel.__file__)"
    )
    return run([sys.executable, "-c", code], cwd=Path.home()).strip()


def labextension_sections(output: str) -> dict[str, list[str]]:
    """`jupyter labextension list` output as {labextensions dir: [extension lines]}."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("/") or re.match(r"^[A-Za-z]:\\", line):
            current = sections.setdefault(line.strip(), [])
        elif line.startswith((" ", "\t")) and current is not None and line.strip():
            current.append(line.strip())
        else:
            current = None
    return sections


def enabled_ok(lines: list[str], name: str = EXT_NAME) -> bool:
    return any(re.match(rf"^{re.escape(name)} v\S+ enabled\s+OK\b", line) for line in lines)


def pip_wheel(source: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """`pip wheel` of a source tree; without build isolation when hatchling is in this env."""
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest)]
    if importlib.util.find_spec("hatchling") is not None:
        args.append("--no-build-isolation")
    return subprocess.run(
        [*args, str(source)], cwd=source, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def built() -> Path:
    """The built extension in the source tree (made by `make extension`)."""
    package = LABEXT / "package.json"
    assert package.is_file(), "fedhem_kernel/labextension is missing: run `make extension`"
    return LABEXT


@pytest.fixture(scope="module")
def wheel(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheel")
    proc = pip_wheel(ROOT, dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = dest.glob("fedhem_kernel-*.whl")
    return whl


@pytest.fixture(scope="module")
def own_install() -> str:
    """This environment's fedhem-kernel, recorded before any test installs a copy elsewhere."""
    return venv_install()


@pytest.fixture(scope="module")
def prefix(wheel: Path, own_install: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed with `pip install --prefix` into an empty directory."""
    target = tmp_path_factory.mktemp("prefix")
    run([*PIP_PREFIX_INSTALL, target, wheel])
    assert venv_install() == own_install, "installing into a prefix changed this environment"
    return target


@pytest.fixture()
def no_node_path(tmp_path: Path) -> str:
    """A PATH on which no `node` (or `nodejs`) can be found."""
    empty = tmp_path / "bin-without-node"
    empty.mkdir()
    path = str(empty)
    assert shutil.which("node", path=path) is None and shutil.which("nodejs", path=path) is None
    return path


def test_built_extension_is_a_prebuilt_federated_bundle(built: Path) -> None:
    meta = json.loads((built / "package.json").read_text())
    assert meta["name"] == EXT_NAME
    load = meta["jupyterlab"]["_build"]["load"]
    assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", load), load
    assert (built / load).is_file()
    # One build's files only: a stale remoteEntry from an older build would be shipped too.
    assert len(list((built / "static").glob("remoteEntry.*.js"))) == 1
    bundle = "".join(p.read_text() for p in (built / "static").glob("*.js"))
    for marker in ("fedhem-sidebar", "fedhem-badge-", '"fedhem","api"', "fedhem-column"):
        assert marker in bundle, (
            f"{marker!r} is not in the built bundle: rebuild with make extension"
        )


def test_venv_lists_the_extension_enabled(built: Path) -> None:
    out = run([BIN / "jupyter", "labextension", "list"])
    sections = labextension_sections(out)
    assert any(enabled_ok(lines) for lines in sections.values()), out
    assert f"{EXT_NAME}" in out and "fedhem-kernel" in out, out


def test_venv_server_extension_enabled() -> None:
    config = ROOT / "jupyter-config" / "server-config" / "fedhem_kernel.json"
    assert config.is_file(), "the server extension's config file is missing"
    out = run([BIN / "jupyter", "server", "extension", "list"])
    assert re.search(r"^\s*fedhem_kernel\s+enabled\s*$", out, re.M), out
    assert re.search(r"fedhem_kernel \S+ OK", out), out


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        data = next(n.split("/data/")[0] for n in names if ".data/data/" in n) + "/data/"
        lab = data + "share/jupyter/labextensions/@fedhem/lab/"
        assert lab + "package.json" in names
        assert lab + "install.json" in names
        entries = [
            n for n in names if re.fullmatch(re.escape(lab) + r"static/remoteEntry\.\w+\.js", n)
        ]
        assert len(entries) == 1, entries
        meta = json.loads(zf.read(lab + "package.json"))
        assert meta["name"] == EXT_NAME
        assert lab + meta["jupyterlab"]["_build"]["load"] in names
        install = json.loads(zf.read(lab + "install.json"))
        assert install["packageName"] == "fedhem-kernel"

        kernel = json.loads(zf.read(data + "share/jupyter/kernels/fedhem/kernel.json"))
        assert "fedhem_kernel" in " ".join(kernel["argv"])

        server = json.loads(
            zf.read(data + "etc/jupyter/jupyter_server_config.d/fedhem_kernel.json")
        )
        assert server["ServerApp"]["jpserver_extensions"]["fedhem_kernel"] is True

        # Build inputs and caches stay out of the wheel.
        for bad in ("node_modules/", "/.yarn/", "extensions/src/", "tsconfig"):
            assert not [n for n in names if bad in n], bad
        # The built extension ships once, as shared data, not again inside the package.
        assert not [n for n in names if n.startswith("fedhem_kernel/labextension/")]


def test_wheel_install_enables_extension_without_node(prefix: Path, no_node_path: str) -> None:
    share = prefix / "share" / "jupyter"
    assert (share / "labextensions" / "@fedhem" / "lab" / "package.json").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "NODE", "npm_"))}
    env.update(PATH=no_node_path, JUPYTER_PATH=str(share), HOME=str(prefix))
    out = run([BIN / "jupyter-labextension", "list"], env=env, cwd=prefix)
    sections = labextension_sections(out)
    ours = sections.get(str(share / "labextensions"))
    assert ours is not None, f"{share / 'labextensions'} not listed:\n{out}"
    assert enabled_ok(ours), out
    assert any("(python, fedhem-kernel)" in line for line in ours), out

    server = prefix / "etc" / "jupyter" / "jupyter_server_config.d" / "fedhem_kernel.json"
    assert json.loads(server.read_text())["ServerApp"]["jpserver_extensions"]["fedhem_kernel"]


def _copy_source_without_build(dest: Path) -> Path:
    """This checkout's Python sources and packaging files, without the built extension."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("labextension", "__pycache__", "*.pyc")
    shutil.copytree(ROOT / "fedhem_kernel", src / "fedhem_kernel", ignore=ignore)
    shutil.copytree(ROOT / "jupyter-config", src / "jupyter-config")
    (src / "extensions").mkdir()
    shutil.copy2(ROOT / "extensions" / "install.json", src / "extensions" / "install.json")
    for name in ("pyproject.toml", "README.md", "hatch_build.py"):
        shutil.copy2(ROOT / name, src / name)
    return src


def test_wheel_build_without_built_extension_fails_clearly(tmp_path: Path) -> None:
    src = _copy_source_without_build(tmp_path)
    proc = pip_wheel(src, tmp_path / "out")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "JupyterLab extension is not built" in out, out
    assert "make extension" in out, out
    assert not list((tmp_path / "out").glob("*.whl"))


def test_editable_install_works_without_built_extension(tmp_path: Path, own_install: str) -> None:
    src = _copy_source_without_build(tmp_path)
    target = tmp_path / "prefix"
    args = [*PIP_PREFIX_INSTALL, target]
    if importlib.util.find_spec("hatchling") is not None:
        args.append("--no-build-isolation")
    run([*args, "-e", src], cwd=tmp_path)
    assert venv_install() == own_install, "installing into a prefix changed this environment"
    assert (target / "share" / "jupyter" / "kernels" / "fedhem" / "kernel.json").is_file()
    assert not (
        target / "share" / "jupyter" / "labextensions" / "@fedhem" / "lab" / "package.json"
    ).exists()
