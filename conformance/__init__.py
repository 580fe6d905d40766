"""Conformance suite for feature-extraction strategies.

The data flows one way: ``zoo`` (model specs) -> ``layers`` (layer specs) -> ``oracle``
(the truth) and ``strategies`` (the extraction) -> ``checks`` -> ``results`` (tidy rows,
files) -> summaries and reports. ``runner`` drives it; ``cli`` is the command line.
"""

__version__ = "0.1.0"
