"""Conformance suite for feature-extraction strategies.

The data flows one way: ``zoo`` (model specs) -> ``layers`` (layer specs) -> ``oracle``
(the truth) and ``strategies`` (the extraction) -> ``checks`` -> ``results`` (tidy rows,
files) -> summaries and reports. ``runner`` drives it; ``cli`` is the command line.

Beside it: ``bench`` measures costs into rows of its own; ``reports`` derives tables and
findings from rows, ``publish`` renders them as Markdown and HTML, ``recommend`` picks a
strategy from them, ``diff`` compares two runs and ``manifest`` what extraction depends on.
"""

__version__ = "0.1.0"
