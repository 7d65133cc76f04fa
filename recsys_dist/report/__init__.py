"""The self-contained HTML report of a run: training curves, metric tables, users' interests.

``data`` holds the plain data contract (JSON round-trippable), ``svg`` draws charts as inline
SVG strings, ``figures`` is the one rule for writing numbers (one precision per table, counts
with thousands separators) and structured values (words, never a Python repr), ``tables``
writes the metric tables with what they were evaluated on as sentences, and ``html``
assembles one page, titled by the model version and the data, that needs no network to view.
"""
