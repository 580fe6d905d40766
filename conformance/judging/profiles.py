"""Every check by name, and the profiles that group them for ``--checks``.

    conformance run --checks default        # all but the slow ones (the default)
    conformance run --checks values shape   # named checks
    conformance run --checks fast           # the checks judged on one extraction
    conformance run --checks slow           # export, compile, onnx: minutes per model on CPU
    conformance run --checks all
"""

from __future__ import annotations

from typing import Callable, Sequence

from conformance.judging.behaviour import BEHAVIOUR_CHECKS, PER_LAYER_BEHAVIOUR_CHECKS
from conformance.judging.checks import CHECKS, PER_LAYER_CHECKS as PER_LAYER_VALUE_CHECKS

__all__ = ["ALL_CHECKS", "PER_LAYER_CHECKS", "PROFILES", "describe", "expand_checks"]

#: name -> check function (value checks take a CheckContext, behaviour checks a Probe).
ALL_CHECKS: dict[str, Callable] = {**CHECKS, **BEHAVIOUR_CHECKS}
PER_LAYER_CHECKS = (*PER_LAYER_VALUE_CHECKS, *PER_LAYER_BEHAVIOUR_CHECKS)
SLOW_CHECKS = ("export", "compile", "onnx")
#: Profile names never collide with check names.
PROFILES: dict[str, tuple[str, ...]] = {
    "default": tuple(name for name in ALL_CHECKS if name not in SLOW_CHECKS),
    "fast": tuple(CHECKS),  # judged on one extraction, no second attach
    "behaviour": tuple(name for name in BEHAVIOUR_CHECKS if name not in SLOW_CHECKS),
    "slow": SLOW_CHECKS,
    "all": tuple(ALL_CHECKS),
}


def expand_checks(names: Sequence[str]) -> list[str]:
    """Check names with profiles expanded, in the order given, without repeats.

    Raises ``KeyError`` naming the first unknown name.
    """
    chosen: list[str] = []
    for name in names:
        if name in PROFILES:
            chosen.extend(PROFILES[name])
        elif name in ALL_CHECKS:
            chosen.append(name)
        else:
            raise KeyError(name)
    return list(dict.fromkeys(chosen))


def describe(name: str) -> str:
    """The first paragraph of a check's docstring, on one line."""
    return " ".join((ALL_CHECKS[name].__doc__ or "").strip().split("\n\n")[0].split())
