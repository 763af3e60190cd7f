"""How results look in a notebook.

- :mod:`~fedhem_kernel.display.render`: renderers by result type (``result._repr_html_()`` and
  ``result.widget()`` look them up there); :mod:`~fedhem_kernel.display.renderers` registers them,
  with a generic pair for any result.

- :mod:`~fedhem_kernel.display.html`, :mod:`~fedhem_kernel.display.km_plot`: the static HTML (and
  matplotlib PNG) every result has, also the fallback where no live kernel is attached.
- :mod:`~fedhem_kernel.display.widgets`: interactive anywidget views (``result.widget()``):
  Kaplan–Meier curves, results tables with suppressed cells marked, the privacy report panel, and
  per-site query progress; their synced state is built by :mod:`~fedhem_kernel.display.state`.
- :mod:`~fedhem_kernel.display.mimebundle`: ``_repr_mimebundle_`` of the results (widget inside a
  kernel, HTML and text always).
- :mod:`~fedhem_kernel.display.progress`: the progress widget shown while a slow query runs.
- :mod:`~fedhem_kernel.display.cif`, :mod:`~fedhem_kernel.display.cif_widget`: competing risks,
  stacked cumulative-incidence panels (PNG, HTML and the ``cif`` widget view).
- :mod:`~fedhem_kernel.display.cluster_state`, :mod:`~fedhem_kernel.display.cluster_plot`: k-means
  and PCA figures (centres or loadings on two components, cluster-profile heatmap) for the widget
  and matplotlib, from the same points.

Importing this package imports nothing else (ipywidgets loads only when a widget is made).
"""
