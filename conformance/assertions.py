"""``assert_conforms``: one model, one strategy, checked in a test with a plain ``assert``-style failure."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from torch import nn

from conformance.running.runner import evaluate

__all__ = ["assert_conforms"]

_NOT_CONFORMING = ("fail", "error", "unsupported")


def assert_conforms(model: nn.Module, *, layers: Sequence[str], strategy: str, checks: Sequence[str] = ("values", "shape", "dtype", "keys"),
                    input_shape: Sequence[int] = (2, 3, 224, 224), device: str = "cpu", seed: int = 0) -> pd.DataFrame:
    """Check ``strategy`` on ``model`` against the oracle; raise ``AssertionError`` with the table of
    every row that is not a pass (``skipped`` rows, such as CUDA-only checks on a CPU, do not count).

    Returns the rows when the model conforms. ``checks`` takes check names and profiles
    (``fast``, ``default``, ...), as ``conformance run --checks`` does; by default, whether the
    features are the true activations with the right shapes, dtypes and names. Example::

        >>> import torchvision
        >>> from conformance import assert_conforms
        >>> assert_conforms(torchvision.models.resnet18(), layers=["layer1", "layer4"], strategy="fx", input_shape=(1, 3, 64, 64))
    """
    from conformance.core.errors import ConformanceError
    from conformance.judging.profiles import expand_checks

    try:
        chosen = expand_checks(list(checks))
    except KeyError as exc:
        raise ConformanceError(f"unknown check {exc.args[0]!r}", hint="see 'conformance list checks'") from None
    rows = evaluate(model, layers=list(layers), strategies=[strategy], checks=chosen, input_shape=tuple(input_shape), device=device, seed=seed,
                    name=type(model).__name__)
    bad = rows[rows["status"].isin(_NOT_CONFORMING)]
    if not bad.empty:
        table = bad[["layer", "check", "status", "diagnosis", "detail", "max_abs_err"]].to_string(index=False, max_colwidth=90)
        raise AssertionError(f"{strategy} does not conform on {type(model).__name__}: {len(bad)} of {len(rows)} rows\n{table}")
    return rows
