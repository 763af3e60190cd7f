"""How a result displays: a live widget inside a Jupyter kernel, HTML and text everywhere.

``result._repr_mimebundle_()`` returns ``text/plain`` and the ``text/html`` fallback (the table or
plot plus the privacy report) always, and adds the widget view
(``application/vnd.jupyter.widget-view+json``) only when running inside an IPython kernel, where a
front end can render it. Outside a kernel (plain Python, a terminal IPython, pytest) no widget is
created and ipywidgets is not imported.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Container
from typing import Any

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

log = logging.getLogger(__name__)


def in_kernel() -> bool:
    """True when this code runs inside an IPython kernel (a notebook, nbclient, a console)."""
    if "IPython" not in sys.modules or "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def result_mimebundle(
    result: Any,
    widget: Callable[[], Any],
    include: Container[str] | None = None,
    exclude: Container[str] | None = None,
) -> dict[str, Any]:
    """The display bundle of a result: widget view (in a kernel), ``text/html``, ``text/plain``."""

    def wanted(mime: str) -> bool:
        return (include is None or mime in include) and (exclude is None or mime not in exclude)

    bundle: dict[str, Any] = {}
    if wanted(WIDGET_MIME) and in_kernel():
        try:
            data, _ = widget()._repr_mimebundle_()
            bundle[WIDGET_MIME] = data[WIDGET_MIME]
        except Exception:  # noqa: BLE001 - the HTML fallback below still shows the result
            log.warning("FedHem: could not create the result widget", exc_info=True)
    if wanted("text/html"):
        bundle["text/html"] = result._repr_html_()
    if wanted("text/plain"):
        bundle["text/plain"] = repr(result)
    return bundle
