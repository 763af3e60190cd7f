"""The cumulative-incidence widget (anywidget; imported only when a widget is made).

The view is the ``cif`` kind of ``static/fedhem_widgets.js``: one panel per group, the causes stacked
(or as curves with their 95 % bands, switched by the synced ``mode``), numbers at risk, hover values,
Gray's test and the privacy panel. The synced state is built by
:func:`fedhem_kernel.display.cif.cif_state` from the result only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as t

from fedhem_kernel.display.cif import cif_state
from fedhem_kernel.display.state import privacy_state
from fedhem_kernel.display.widgets import _FedHemWidget

if TYPE_CHECKING:
    from fedhem_kernel.analyses.cumulative_incidence.result import CumulativeIncidenceResult


class CumulativeIncidenceWidget(_FedHemWidget):
    """Stacked cumulative-incidence panels (or curves with 95 % bands), numbers at risk, hover
    values, Gray's test and the privacy report."""

    _kind = t.Unicode("cif").tag(sync=True)
    cif = t.Dict().tag(sync=True)
    mode = t.Unicode("stacked").tag(sync=True)
    privacy = t.Dict().tag(sync=True)

    def __init__(self, result: CumulativeIncidenceResult, **kwargs: Any) -> None:
        super().__init__(cif=cif_state(result), privacy=privacy_state(result.privacy), **kwargs)

    def _describe(self) -> str:
        return str(self.cif.get("title", ""))


def cif_widget(result: CumulativeIncidenceResult) -> CumulativeIncidenceWidget:
    return CumulativeIncidenceWidget(result)
