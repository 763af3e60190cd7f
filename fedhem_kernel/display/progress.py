"""Per-site progress of a running query, shown in the notebook only when the query is slow.

How the one-second rule works: the kernel runs a cell on one thread, so it cannot wait a second and
*then* display. Instead, when a query starts, a :class:`~fedhem_kernel.display.widgets.ProgressWidget`
is displayed at once but hidden; the browser reveals it after ``delay_ms`` (1 s) unless the query is
done by then. Every site's reply updates it as it arrives (the engine yields replies as they
complete). When the query ends (``Query.finish``, or at the latest when the cell finishes):

* within the delay: the widget is closed and its output replaced by an empty text, so nothing is
  left in the notebook;
* after the delay: it stays, showing which sites answered how, and the total time.

Only in a kernel whose shell has comms (``in_kernel()``); elsewhere :func:`show_progress` returns
immediately. A failure here is logged by the coordinator and never affects the query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedhem_kernel.display.mimebundle import in_kernel

if TYPE_CHECKING:
    from fedhem_kernel.display.widgets import ProgressWidget
    from fedhem_kernel.engine.coordinator import ProgressEvent

DELAY_SECONDS = 1.0


@dataclass
class _Running:
    widget: ProgressWidget
    handle: Any  # IPython DisplayHandle
    started: float
    status: dict[str, str] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)


class NotebookProgress:
    """Keeps one progress widget per running query and finalises them when the cell ends."""

    def __init__(self, delay: float = DELAY_SECONDS) -> None:
        self.delay = delay
        self.running: dict[str, _Running] = {}
        self._hooked: set[int] = set()

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self._start(event)
            return
        run = self.running.get(event.query_id)
        if run is None:  # not a query we show (e.g. fed.sites, or started outside a kernel)
            return
        if event.kind == "round":
            for site in event.sites:
                run.status[site] = "waiting"
            self._sync(run, step=event.step or "")
        elif event.kind == "reply" and event.site is not None:
            run.status[event.site] = event.status or "error"
            self._sync(run)
        elif event.kind == "detail" and event.site is not None:
            run.detail[event.site] = event.detail or ""
            self._sync(run)
        elif event.kind == "done":
            self.finish(event.query_id, failed=event.status == "error")

    def _start(self, event: ProgressEvent) -> None:
        if not in_kernel() or event.query_id in self.running:
            return
        from IPython import get_ipython
        from IPython.display import display

        from fedhem_kernel.display.widgets import ProgressWidget

        shell = get_ipython()
        if id(shell) not in self._hooked:
            shell.events.register("post_run_cell", self._cell_finished)
            self._hooked.add(id(shell))
        status = {site: "waiting" for site in event.sites}
        widget = ProgressWidget(
            title=f"{event.analysis or 'query'} on '{event.dataset}'",
            sites=[{"site": s, "status": v} for s, v in status.items()],
            delay_ms=int(self.delay * 1000),
        )
        handle = display(widget, display_id=True)
        self.running[event.query_id] = _Running(widget, handle, time.monotonic(), status)

    def _sync(self, run: _Running, **traits: Any) -> None:
        sites = [
            {"site": s, "status": v, "detail": run.detail.get(s, "")} for s, v in run.status.items()
        ]
        run.widget.set_trait("sites", sites)
        run.widget.set_trait("elapsed", round(time.monotonic() - run.started, 2))
        for name, value in traits.items():
            run.widget.set_trait(name, value)

    def finish(self, query_id: str, failed: bool = False) -> None:
        """End one query's display: remove it if it was quick, else show the final state."""
        run = self.running.pop(query_id, None)
        if run is None:
            return
        elapsed = time.monotonic() - run.started
        if elapsed < self.delay:
            run.widget.close()
            if run.handle is not None:
                run.handle.update({"text/plain": ""}, raw=True)
            return
        self._sync(run)
        run.widget.set_trait("failed", failed)
        run.widget.set_trait("elapsed", round(elapsed, 2))
        run.widget.set_trait("done", True)

    def _cell_finished(self, result: Any = None) -> None:
        failed = bool(getattr(result, "error_in_exec", None))
        for query_id in list(self.running):
            self.finish(query_id, failed=failed)


_PROGRESS = NotebookProgress()


def show_progress(event: ProgressEvent) -> None:
    """The coordinator's default observer in a kernel (see ``engine.coordinator.notebook_progress``)."""
    _PROGRESS(event)
