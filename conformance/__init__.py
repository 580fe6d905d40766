"""Conformance suite for feature-extraction strategies.

The data flows one way: ``zoo`` (model specs) -> ``layers`` (layer specs) -> ``oracle``
(the truth) and ``strategies`` (the extraction) -> ``checks`` -> ``results`` (tidy rows,
files) -> summaries and reports. ``runner`` drives it; ``cli`` is the command line.

Beside it: ``bench`` measures costs into rows of its own; ``reports`` derives tables and
findings from rows, ``publish`` renders them as Markdown and HTML, ``recommend`` picks a
strategy from them, ``diff`` compares two runs and ``manifest`` what extraction depends on.
In a project's tests: ``assert_conforms`` (``assertions``) and the pytest plugin
(``pytest_plugin``), configured by ``[tool.conformance]`` (``config``).
"""

__version__ = "0.1.0"

__all__ = ["assert_conforms"]


def __getattr__(name: str):
    # torch is imported on first use, not by the pytest plugin's `import conformance`
    if name == "assert_conforms":
        from conformance.assertions import assert_conforms

        return assert_conforms
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
