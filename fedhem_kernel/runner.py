"""``fedhem run NOTEBOOK --param name=value``: execute a notebook headlessly, papermill-style.

The cell tagged ``parameters`` holds the defaults; the given values go into a new cell right after it
(tagged ``injected-parameters``), the notebook runs top to bottom on its kernel (the ``fedhem`` kernel
by default) against the chosen federation, and the executed copy is written, with what was run recorded
in ``metadata.fedhem``. The copy is written even when a cell fails (the error is in it), and always
atomically: a crash never leaves a half-written notebook.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from fedhem_kernel.errors import ParameterError

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookRunError(Exception):
    """A cell raised; the executed copy (with the error in it) was still written."""

    def __init__(self, message: str, output: Path) -> None:
        super().__init__(message)
        self.output = output


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value``: the value is a Python literal (``5``, ``0.5``, ``True``, ``[1, 2]``) or a string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ParameterError(
            f"--param needs name=value with a Python identifier as name, got {text!r}"
        )
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw  # plain text, e.g. dataset=aml or where=age >= 60
    return name, value


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def inject_parameters(nb: Any, params: Mapping[str, Any]) -> list[str]:
    """Add the injected-parameters cell; returns the names the notebook does not declare."""
    cells = nb.cells
    nb.cells = [c for c in cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    index = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])
        ),
        None,
    )
    declared = _assigned_names(nb.cells[index].source) if index is not None else set()
    if not params:
        return []
    source = "# Parameters (injected by fedhem run)\n" + "".join(
        f"{name} = {value!r}\n" for name, value in params.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(0 if index is None else index + 1, cell)
    return [n for n in params if n not in declared]


@contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _resolve_federation(federation: str | None) -> str | None:
    if federation is None or federation.lower() in ("demo", "none"):
        return federation
    path = Path(federation).expanduser().resolve()
    from fedhem_kernel.federation import Federation

    Federation.from_config(path).close()  # a bad config fails here, before a kernel starts
    return str(path)


def _shutdown(km: Any) -> None:
    """NotebookClient leaves a kernel manager it did not create running: stop the kernel here."""
    from jupyter_core.utils import run_sync

    if run_sync(km.is_alive)():
        run_sync(km.shutdown_kernel)(now=False)


def default_output(notebook: Path) -> Path:
    return notebook.with_name(f"{notebook.stem}.executed.ipynb")


def run_notebook(
    notebook: str | Path,
    output: str | Path | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    federation: str | None = None,
    kernel_name: str | None = None,
    timeout: float = 600,
    kernel_spec_manager: Any = None,
) -> Path:
    """Execute ``notebook`` with ``params`` against ``federation`` (``demo``, ``none`` or a TOML path).

    Returns the path of the executed copy (default ``NAME.executed.ipynb`` beside the input). Raises
    :class:`NotebookRunError` when a cell fails, after writing the copy.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = Path(notebook)
    if not source.is_file():
        raise ParameterError(f"notebook not found: {source}")
    target = Path(output) if output is not None else default_output(source)
    if target.resolve() == source.resolve():
        raise ParameterError("the output must not overwrite the input notebook")
    params = dict(params or {})
    nb = nbformat.read(source, as_version=4)
    undeclared = inject_parameters(nb, params)
    fed_value = _resolve_federation(federation)
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "fedhem"
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    from jupyter_client.manager import AsyncKernelManager

    # A manager of our own (NotebookClient takes no KernelSpecManager), with CurveZMQ encryption when
    # the kernelspec supports it (the fedhem kernel does).
    manager_kwargs: dict[str, Any] = {"kernel_name": kernel, "transport_encryption": "auto"}
    if kernel_spec_manager is not None:
        manager_kwargs["kernel_spec_manager"] = kernel_spec_manager
    kwargs: dict[str, Any] = {"km": AsyncKernelManager(**manager_kwargs)}
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=timeout,
        resources={"metadata": {"path": str(source.parent.resolve())}},
        **kwargs,
    )
    failure: str | None = None
    with _environ(FEDHEM_FEDERATION=fed_value, MPLBACKEND=os.environ.get("MPLBACKEND", "Agg")):
        try:
            client.execute()
        except CellExecutionError as exc:
            failure = str(exc).strip().splitlines()[-1] if str(exc).strip() else "a cell failed"
        finally:
            _shutdown(kwargs["km"])
    nb.metadata["fedhem"] = {
        "input": str(source),
        "parameters": params,
        "undeclared_parameters": undeclared,
        "federation": fed_value or os.environ.get("FEDHEM_FEDERATION", "demo"),
        "kernel": kernel,
        "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(time.perf_counter() - t0, 3),
        "status": "failed" if failure else "completed",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    nbformat.write(nb, partial)
    os.replace(partial, target)
    if failure:
        raise NotebookRunError(f"{source.name}: {failure}", target)
    return target
