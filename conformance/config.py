"""``[tool.conformance]`` in a project's ``pyproject.toml``: what to run, read by the CLI and the pytest plugin.

Keys are the long options of ``conformance run`` (``models`` for its repeatable ``--model``),
plus ``baseline`` and the accepted failures. The CLI's flags override the file::

    [tool.conformance]
    models = ["torchvision:resnet18", "mypkg/model.py:build"]
    layers = ["bn1", "layer1"]
    strategies = ["hooks", "hooks+clone", "fx"]
    checks = ["values", "shape", "gradients"]
    input-shape = "2,3,64,64"
    baseline = "conformance-baseline.json"   # conformance baseline save RUN --out ...

    [[tool.conformance.accept]]               # reported as xfail while it fails this way
    strategy = "hooks"                        # fnmatch patterns; model, layer and check too
    layer = "bn1"
    check = "values"
    diagnosis = "inplace_aliasing"            # the exact diagnosis the failure must have
    reason = "the ReLU after bn1 is in place; we use hooks+clone"

A bad key or value raises :class:`~conformance.core.errors.ConformanceError` naming it.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.core.errors import ConformanceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Accepted", "ConformanceConfig", "load_config"]

#: key -> (the type it must have, what to write)
_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "models": (list, "a list of model references, e.g. [\"torchvision:resnet18\"]"),
    "zoo": (str, "quick, torchvision, timm, timm-families or all"),
    "include": (list, "a list of fnmatch patterns"),
    "exclude": (list, "a list of fnmatch patterns"),
    "include-big": (bool, "true or false"),
    "layers": (list, "a list of module paths, FX node names or @children, @stages, @leaves, @nodes"),
    "strategies": (list, "a list of strategy names, or [\"all\"]"),
    "checks": (list, "a list of check names or profiles"),
    "device": (str, "\"cpu\" or \"cuda\""),
    "input-shape": (str, "\"N,C,H,W\", e.g. \"2,3,224,224\""),
    "seed": (int, "an integer"),
    "threads": (int, "an integer"),
    "cell-timeout": ((int, float), "seconds, a number"),
    "baseline": (str, "a path to a file written by 'conformance baseline save', relative to pyproject.toml"),
    "accept": (list, "an array of tables: [[tool.conformance.accept]]"),
}
_ACCEPT_KEYS = ("model", "strategy", "layer", "check", "diagnosis", "reason")


@dataclass(frozen=True)
class Accepted:
    """A failure the project accepts: its cells (fnmatch patterns) and the diagnosis it must have."""

    diagnosis: str
    model: str = "*"
    strategy: str = "*"
    layer: str = "*"
    check: str = "*"
    reason: str = ""

    def covers(self, *, model: str, strategy: str, layer: str, check: str) -> bool:
        pairs = ((model, self.model), (strategy, self.strategy), (layer, self.layer), (check, self.check))
        return all(fnmatch.fnmatchcase(value, pattern) for value, pattern in pairs)


@dataclass(frozen=True)
class ConformanceConfig:
    """The validated ``[tool.conformance]`` table; ``options`` holds the ``conformance run`` keys."""

    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    accepted: tuple[Accepted, ...] = ()
    baseline: Path | None = None

    def accepted_for(self, *, model: str, strategy: str, layer: str, check: str) -> Accepted | None:
        """The first accepted failure covering the cell, else ``None``."""
        return next((a for a in self.accepted if a.covers(model=model, strategy=strategy, layer=layer, check=check)), None)


def _bad_key(key: str, known: tuple[str, ...] | list[str], where: str) -> ConformanceError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return ConformanceError(f"unknown key {key!r} in {where}", hint=hint)


def _accepted(entries: list, where: str) -> tuple[Accepted, ...]:
    accepted = []
    for number, entry in enumerate(entries, 1):
        here = f"{where}.accept entry {number}"
        if not isinstance(entry, dict):
            raise ConformanceError(f"{here} is not a table", hint="write each as [[tool.conformance.accept]] with strategy, layer, check, diagnosis")
        for key, value in entry.items():
            if key not in _ACCEPT_KEYS:
                raise _bad_key(key, _ACCEPT_KEYS, here)
            if not isinstance(value, str):
                raise ConformanceError(f"{here}: {key} must be a string, not {value!r}")
        if not entry.get("diagnosis"):
            raise ConformanceError(f"{here} names no diagnosis",
                                   hint="accept a failure for its reason: add diagnosis = \"...\" as the failing row shows it")
        accepted.append(Accepted(**entry))
    return tuple(accepted)


def load_config(pyproject: Path | str) -> ConformanceConfig:
    """The ``[tool.conformance]`` table of ``pyproject``, validated; empty when it has none."""
    path = Path(pyproject)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return ConformanceConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConformanceError(f"{path} is not valid TOML: {exc}") from None
    table = document.get("tool", {}).get("conformance")
    if table is None:
        return ConformanceConfig()
    where = f"[tool.conformance] of {path}"
    for key, value in table.items():
        if key not in _KEYS:
            raise _bad_key(key, list(_KEYS), where)
        kind, expected = _KEYS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConformanceError(f"{key} = {value!r} in {where}", hint=f"{key} must be {expected}")
        if kind is list and key != "accept" and not all(isinstance(item, str) for item in value):
            raise ConformanceError(f"{key} = {value!r} in {where}", hint=f"{key} must be {expected}")
    options = {key: value for key, value in table.items() if key not in ("accept", "baseline")}
    baseline = path.parent / table["baseline"] if "baseline" in table else None
    return ConformanceConfig(path=path, options=options, accepted=_accepted(table.get("accept", []), where), baseline=baseline)
