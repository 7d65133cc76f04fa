"""The self-contained HTML report of a run: training curves, metric tables, users' interests.

``data`` holds the plain data contract (JSON round-trippable), ``svg`` draws charts as inline
SVG strings, and ``html`` assembles one page that needs no network to view.
"""
