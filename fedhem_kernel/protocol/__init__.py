"""What crosses the trust boundary, known to both sides.

- :mod:`~fedhem_kernel.protocol.messages`: a site step request and a site's reply.
- :mod:`~fedhem_kernel.protocol.report`: what a site released, suppressed or refused (structured
  details), and a query's privacy report.
- :mod:`~fedhem_kernel.protocol.codec`: requests and replies as typed Flower records;
  :mod:`~fedhem_kernel.protocol.wire`: Flower messages as wire bytes.
- :mod:`~fedhem_kernel.protocol.where`: the ``where=`` language's syntax.
- :mod:`~fedhem_kernel.protocol.progress`: progress events of a running query.
- :mod:`~fedhem_kernel.protocol.query`: the interface an analysis's combine step asks the sites
  through.
- :mod:`~fedhem_kernel.protocol.endpoints`: the addresses of sites hosted in this process.

Nothing here imports the site, the engine, an analysis or the display.
"""
