"""The analyses: one package each, listed in :mod:`~fedhem_kernel.analyses.registry`.

An analysis package ``analyses/<name>/`` holds

- ``site.py`` (and ``site_*.py``): runs at each site: rows -> partial aggregates, with its release
  rules; its ``STEPS`` are the site steps the site's ClientApp answers;
- ``combine.py`` (and ``combine_*.py``): runs on the researcher's side: ``run(query, **params)`` asks
  the sites (one or more rounds) and combines what they released into the result;
- ``result.py``: the result type (numbers only; renderers are registered in ``display/``);
- ``__init__.py``: what both sides share (names, constants); it imports neither side.

Adding an analysis is one package and one line in the registry. ``common/`` holds helpers several
analyses share, named by side in the same way.
"""
