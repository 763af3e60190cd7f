"""Helpers several analyses share. The side each module runs on is in its name: ``site_*`` at the site,
``combine_*`` on the researcher's side, ``params`` on both (checks of request parameters, no rows).
"""
