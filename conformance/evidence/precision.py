"""How far the true features move under the numeric conditions users and checks run in,
measured against the tolerance the checks allow on the device.

For each model and layer the oracle's capture under the harness's settings (fixed seed,
deterministic kernels, no TF32) is the reference; each condition takes the capture again with
one thing changed:

* ``repeat``: nothing (the same call again);
* ``batch_split``: the first sample alone, against its slice of the batch;
* ``channels_last``: model and input in ``torch.channels_last`` (4-D inputs only);
* ``nondeterministic``: deterministic algorithms off and cuDNN autotuning on (a second call,
  after the autotuner has chosen);
* ``tf32``: TF32 for matrix products and cuDNN convolutions;
* ``cpu``: the model and input on the CPU, against the device's reference (other devices only).

A row's ``tolerance_ratio`` is the largest ``|got - want| / (atol + rtol * |want|)`` over the
feature's elements at the checks' tolerance for the dtype and device
(:func:`conformance.core.compare.tolerance`): at most 1 where ``allclose`` passes.

Example::

    >>> frame = measure_precision(references=["torchvision:resnet18"], device="cuda", seed=0)
    >>> frame.groupby("condition")["tolerance_ratio"].max()
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from strategies.base import tensor_tree

from conformance.core.compare import compare, tolerance
from conformance.truth.layers import resolve_layers
from conformance.truth.oracle import capture
from conformance.zoo.specs import ModelSpec, build_model

__all__ = ["CONDITIONS", "measure_precision", "precision_summary"]

CONDITIONS = ("repeat", "batch_split", "channels_last", "nondeterministic", "tf32", "cpu")

COLUMNS = ["model", "layer", "condition", "device", "dtype", "status", "bitwise", "max_abs_err", "scale", "relative_err",
           "tolerance_ratio", "detail"]


@contextlib.contextmanager
def _backend_flags(*, deterministic: bool, benchmark: bool, tf32: bool) -> Iterator[None]:
    """torch's kernel-choice flags set for the block and restored after it."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[2:]


def _harness_settings() -> contextlib.AbstractContextManager:
    return _backend_flags(deterministic=True, benchmark=False, tf32=False)


def _float_leaves(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tensor_tree(value)) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]


def _first_sample(value: Any, batch: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch cut to its first sample."""
    return torch.utils._pytree.tree_map(
        lambda leaf: leaf[:1] if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] == batch else leaf, tensor_tree(value))


def _tolerance_ratio(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest ``|got - want| / (atol + rtol * |want|)`` at ``want``'s dtype and device
    tolerance; equal elements (NaN with NaN too) count 0."""
    rtol, atol = tolerance(want.dtype, want.device)
    got, want = got.detach().to(want.device, torch.float64), want.detach().to(torch.float64)
    diff = torch.where((got == want) | (got.isnan() & want.isnan()), 0.0, (got - want).abs())
    return float((diff / (atol + rtol * want.abs())).max()) if diff.numel() else 0.0


def _measure(got: Any, want: Any) -> dict[str, Any]:
    """The error of ``got`` against ``want`` as the checks measure it (:func:`compare`), and its
    ratio to their tolerance, over the floating-point leaves."""
    comparison = compare(got, want)
    if comparison.mismatch:
        return {"status": "error", "detail": f"the condition changed the feature: {comparison.detail}"}
    pairs = list(zip(_float_leaves(got), _float_leaves(want)))
    if not pairs:
        return {"status": "skipped", "detail": "no floating-point tensor in the feature"}
    scale = comparison.scale
    return {"status": "ok", "bitwise": comparison.bitwise, "max_abs_err": comparison.max_abs_err, "scale": scale,
            "relative_err": comparison.max_abs_err / scale if scale else None,
            "tolerance_ratio": max(_tolerance_ratio(g, w) for g, w in pairs), "detail": ""}


def _conditions(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, device: torch.device) -> dict[str, Callable[[], tuple[Any, Callable[[Any], Any]]]]:
    """Each condition: a function giving its capture's layers and how to cut the reference to match."""
    def taken(model_: nn.Module, input_: torch.Tensor) -> dict[str, Any]:
        truth = capture(model_, input_, layers=layers)
        return {layer: truth.layers[layer].value for layer in layers}

    def unchanged(value: Any) -> Any:
        return value

    def repeat() -> tuple[Any, Callable[[Any], Any]]:
        with _harness_settings():
            return taken(model, x), unchanged

    def batch_split() -> tuple[Any, Callable[[Any], Any]]:
        if x.shape[0] < 2:
            raise _NotApplicable("the input holds one sample")
        with _harness_settings():
            return taken(model, x[:1]), lambda value: _first_sample(value, x.shape[0])

    def channels_last() -> tuple[Any, Callable[[Any], Any]]:
        if x.dim() != 4:
            raise _NotApplicable(f"the input is {x.dim()}-D; channels_last is for 4-D tensors")
        with _harness_settings():
            return taken(copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)), unchanged

    def nondeterministic() -> tuple[Any, Callable[[Any], Any]]:
        with _backend_flags(deterministic=False, benchmark=True, tf32=False):
            taken(model, x)  # the autotuner chooses on the first call
            return taken(model, x), unchanged

    def tf32() -> tuple[Any, Callable[[Any], Any]]:
        with _backend_flags(deterministic=True, benchmark=False, tf32=True):
            return taken(model, x), unchanged

    def cpu() -> tuple[Any, Callable[[Any], Any]]:
        if device.type == "cpu":
            raise _NotApplicable("the reference is on the CPU")
        with _harness_settings():
            return taken(copy.deepcopy(model).to("cpu"), x.to("cpu")), unchanged

    return {"repeat": repeat, "batch_split": batch_split, "channels_last": channels_last,
            "nondeterministic": nondeterministic, "tf32": tf32, "cpu": cpu}  # in the order of CONDITIONS


class _NotApplicable(Exception):
    """The condition does not apply to this model or device."""


def _model_rows(spec: ModelSpec, *, device: torch.device, seed: int, layers: Sequence[str]) -> list[dict[str, Any]]:
    base = {"model": spec.id, "device": str(device)}
    try:
        model = build_model(spec=spec, seed=seed).to(device).eval()
        x = spec.inputs(seed=seed, device=str(device))[1]
        if not isinstance(x, torch.Tensor):
            raise _NotApplicable(f"the model takes a {spec.input_kind}, not one tensor")
        taps = list(resolve_layers(model, spec, layers))
        with torch.no_grad(), _harness_settings():
            truth = capture(model, x, layers=taps)
        reference = {tap: truth.layers[tap].value for tap in taps}
    except _NotApplicable as exc:
        return [{**base, "layer": "*", "condition": name, "status": "skipped", "detail": str(exc)} for name in CONDITIONS]
    except Exception as exc:  # one model's failure is its rows, not the end of the measurement
        return [{**base, "layer": "*", "condition": name, "status": "error", "detail": f"{type(exc).__name__}: {exc}"} for name in CONDITIONS]
    rows = []
    for name, condition in _conditions(model, x, taps, device=device).items():
        try:
            with torch.no_grad():
                got, cut = condition()
        except _NotApplicable as exc:
            rows.append({**base, "layer": "*", "condition": name, "status": "skipped", "detail": str(exc)})
            continue
        except Exception as exc:
            rows.append({**base, "layer": "*", "condition": name, "status": "error", "detail": f"{type(exc).__name__}: {exc}"})
            continue
        for tap in taps:
            dtypes = {str(leaf.dtype).removeprefix("torch.") for leaf in _float_leaves(reference[tap])}
            rows.append({**base, "layer": str(tap), "condition": name, "dtype": " ".join(sorted(dtypes)),
                         **_measure(got[tap], cut(reference[tap]))})
    return rows


def measure_precision(*, specs: Sequence[ModelSpec], device: str, seed: int, layers: Sequence[str] = ("@stages",),
                      log: Callable[[str], None] = lambda message: None) -> pd.DataFrame:
    """One row per model, layer and condition (:data:`CONDITIONS`): the error against the
    reference, its RMS scale, and the ratio to the checks' tolerance on ``device``."""
    rows = []
    for spec in specs:
        log(f"{spec.id}: {', '.join(CONDITIONS)}")
        rows.extend(_model_rows(spec, device=torch.device(device), seed=seed, layers=layers))
    return pd.DataFrame(rows, columns=COLUMNS)


def precision_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per condition: features measured, bitwise equal, within the checks' tolerance, the largest
    tolerance ratio and relative error, and the rows skipped or in error."""
    measured = frame[frame["status"] == "ok"]
    table = measured.groupby("condition", sort=False).agg(
        features=("layer", "size"), bitwise=("bitwise", "sum"),
        within_tolerance=("tolerance_ratio", lambda ratios: int((ratios <= 1).sum())),
        largest_tolerance_ratio=("tolerance_ratio", "max"), largest_relative_err=("relative_err", "max"))
    others = frame[frame["status"] != "ok"].groupby("condition", sort=False)["status"].agg(lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
    table["not_measured"] = others.reindex(table.index).fillna("")
    missing = [name for name in others.index if name not in table.index]
    if missing:
        table = pd.concat([table, pd.DataFrame({"not_measured": others[missing]})])
    counts = {"features": "Int64", "bitwise": "Int64", "within_tolerance": "Int64"}  # conditions measured nowhere have none
    return table.astype(counts).reindex([name for name in CONDITIONS if name in table.index]).reset_index(names="condition")
