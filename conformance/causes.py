"""Why an extraction raised: the cause of an ``error`` row, measured like a diagnosis.

A strategy that raises gets ``build_failed`` (attaching raised) or ``call_failed`` (calling
raised). :func:`explain` names the cause where one is measured, and leaves the row as it is
otherwise; the headline counts what is left as unexplained errors. Each cause has its
planted fault in ``tests/test_causes.py``.

=====================  ===========================================================  ==========================
cause                  measured by                                                  planted fault
=====================  ===========================================================  ==========================
not_called             the oracle's pass never runs the layer's module (a           ``never_called``
                       ``ModuleList``, an aux head in eval), the strategy fails on
                       it requested alone and works on the other layers alone
children_not_chained   running the top-level children one after another in          ``functional_between``
                       registration order raises the very same exception
untraceable            the strategy's symbolic trace raised ``torch.fx``'s           ``branch_on_value``
                       ``TraceError``; the detail names the model's source line
=====================  ===========================================================  ==========================
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

__all__ = ["GENERIC_ERRORS", "describe_exception", "explain", "explain_whole"]

#: Error diagnoses that say what raised, not why: counted as unexplained errors.
GENERIC_ERRORS = ("", "build_failed", "call_failed", "check_failed", "oracle_failed", "layers_failed")

Cause = Optional[tuple[str, str]]


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _model_line(exc: BaseException) -> str:
    """Where in the model's code the trace failed: the innermost frame outside torch."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.startswith(torch_dir)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}" + (f" ({frame.line})" if frame.line else "")


def explain(*, exc: BaseException, layers: Sequence[str], not_run: Callable[[str], bool], replay_error: Callable[[], str | None],
            works_elsewhere: bool) -> Cause:
    """The cause of one failed request of ``layers``, or None where none is measured;
    ``works_elsewhere``: the strategy extracts other layers of this model alone."""
    if works_elsewhere and layers and all(not_run(layer) for layer in layers):
        return "not_called", f"the module does not run for this input, and the strategy raises for it (it works on other layers): {describe_exception(exc)}"
    if isinstance(exc, torch.fx.proxy.TraceError):
        return "untraceable", f"FX cannot trace the model: {describe_exception(exc)}{_model_line(exc)}"
    if replay_error() == describe_exception(exc):
        return "children_not_chained", f"running the top-level children in registration order raises the same: {describe_exception(exc)}"
    return None


def explain_whole(*, exc: BaseException, whole: Cause, worked: set[str], alone: dict[str, Cause]) -> Cause:
    """The cause of a request that failed as a whole: its own, or, where every layer that fails
    alone fails because its module does not run (``alone``: each failing layer's cause) and the
    ``worked`` layers work alone, that."""
    if whole is not None or not alone or not worked:
        return whole
    if all(cause is not None and cause[0] == "not_called" for cause in alone.values()):
        return "not_called", (f"the request fails as a whole because {', '.join(alone)} does not run for this input "
                              f"(the other layers work alone): {describe_exception(exc)}")
    return None
