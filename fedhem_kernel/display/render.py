"""Renderers by result type: how each kind of result looks as HTML and as a widget.

A result's ``_repr_html_`` and ``widget()`` call :func:`render`, which looks the result's type up
here (walking its classes, so a new analysis gets the generic renderers of
:class:`~fedhem_kernel.analyses.common.result_base.Result`: title, summary table, footnote and the
privacy report). The specific renderers are registered in :mod:`fedhem_kernel.display.renderers`,
imported on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

Kind = Literal["html", "widget"]
Renderer = Callable[..., Any]

_RENDERERS: dict[str, dict[type, Renderer]] = {"html": {}, "widget": {}}
_loaded = False
_lock = threading.Lock()


def renders(kind: Kind, result_type: type) -> Callable[[Renderer], Renderer]:
    """Register the decorated function as the ``kind`` renderer of ``result_type``."""

    def register(fn: Renderer) -> Renderer:
        table = _RENDERERS[kind]
        if result_type in table:
            raise ValueError(f"a {kind} renderer of {result_type.__name__} is registered already")
        table[result_type] = fn
        return fn

    return register


def renderer(kind: Kind, result: Any) -> Renderer:
    """The ``kind`` renderer of ``result``'s type (or of its nearest base class)."""
    global _loaded
    if not _loaded:
        with _lock:
            if not _loaded:
                import fedhem_kernel.display.renderers  # noqa: F401 - registers them

                _loaded = True
    table = _RENDERERS[kind]
    for cls in type(result).__mro__:
        if cls in table:
            return table[cls]
    raise TypeError(f"no {kind} renderer for {type(result).__name__}")


def render(kind: Kind, result: Any, **options: Any) -> Any:
    """``result`` as HTML (``kind="html"``) or as a widget (``kind="widget"``, with ``options``)."""
    return renderer(kind, result)(result, **options)
