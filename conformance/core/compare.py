"""How a value compares with the truth: dtype and device tolerances, exact equality, the
largest error and the scale of the truth it is judged against."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from strategies.base import tensor_tree

__all__ = ["Comparison", "bitwise_equal", "compare", "is_close", "same_bits", "tolerance"]

# (rtol, atol) by dtype; CUDA gets ten times the CPU tolerance for kernel-selection noise.
_TOLERANCE = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


def tolerance(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing values of ``dtype`` computed on ``device``."""
    rtol, atol = _TOLERANCE.get(dtype, (0.0, 0.0))
    scale = 10.0 if device.type == "cuda" else 1.0
    return rtol * scale, atol * scale


@dataclass
class Comparison:
    """How an actual value compares with an expected one."""

    close: bool
    bitwise: bool
    max_abs_err: float | None = None
    scale: float | None = None  # RMS of the expected value's floating-point leaves
    mismatch: str = ""  # "structure" or "shape" when the values cannot be compared element-wise
    detail: str = ""


_TRACING_TENSORS = ("FakeTensor", "FunctionalTensor", "Proxy")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return type(value).__name__


def _all_within(got: torch.Tensor, want: torch.Tensor, *, exact: torch.Tensor, diff: torch.Tensor, scale: float = 1.0) -> bool:
    """allclose at the dtype tolerance times ``scale``: |got - want| <= atol + rtol * |want| where
    both are finite; otherwise equal, or NaN against NaN (``exact``: ``want`` in the arithmetic's
    dtype, ``diff``: |got - exact|)."""
    rtol, atol = tolerance(want.dtype, want.device)
    within = ((diff <= atol * scale + rtol * scale * exact.abs()) & diff.isfinite()) | (got == want) | (got.isnan() & want.isnan())
    return bool(within.all())


def compare(actual: Any, expected: Any, *, scale: float = 1.0) -> Comparison:
    """Compare two values (tensors or nested structures of tensors) with dtype/device
    tolerances, multiplied by ``scale`` where another runtime computed ``actual``."""
    actual_leaves, actual_spec = tree_flatten(tensor_tree(actual))
    expected_leaves, expected_spec = tree_flatten(tensor_tree(expected))
    if actual_spec != expected_spec:
        return Comparison(False, False, mismatch="structure", detail=f"got {_describe(actual)}, expected {_describe(expected)}")
    close = bitwise = True
    max_abs = squares = 0.0
    count = 0
    for got, want in zip(actual_leaves, expected_leaves):
        if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
            same = type(got) is type(want) and got == want
            close, bitwise = close and same, bitwise and same
            continue
        if got.shape != want.shape:
            return Comparison(False, False, mismatch="shape", detail=f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if got.device.type == "meta" or type(got).__name__ in _TRACING_TENSORS:
            return Comparison(False, False, mismatch="structure", detail=f"got a {type(got).__name__} left over from tracing")
        got = got.detach().to(want.device)
        same = got.dtype == want.dtype and torch.equal(got, want)
        bitwise = bitwise and same
        if not want.is_floating_point():
            close = close and same
            continue
        # float32 arithmetic (float64 for float64 values), as allclose does it: one pass for the
        # error and the verdict, none of it where the values are bitwise equal
        exact = want if want.dtype == torch.float64 else want.float()
        if want.numel():
            squares += torch.linalg.vector_norm(exact, dtype=torch.float64).item() ** 2
            count += want.numel()
        if same:
            continue
        diff = (got.to(exact.dtype) - exact).abs()
        if diff.numel():
            max_abs = max(max_abs, diff.max().item())
        close = close and got.dtype == want.dtype and _all_within(got, want, exact=exact, diff=diff, scale=scale)
    return Comparison(close, bitwise, max_abs, math.sqrt(squares / count) if count else None)


def same_bits(actual: Any, expected: Any) -> bool:
    """``compare(actual, expected).bitwise``, without the error and the scale it also measures."""
    actual_leaves, actual_spec = tree_flatten(tensor_tree(actual))
    expected_leaves, expected_spec = tree_flatten(tensor_tree(expected))
    if actual_spec != expected_spec:
        return False
    for got, want in zip(actual_leaves, expected_leaves):
        if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
            if not (type(got) is type(want) and got == want):
                return False
        elif (got.shape != want.shape or got.device.type == "meta" or type(got).__name__ in _TRACING_TENSORS
              or got.dtype != want.dtype or not torch.equal(got.detach().to(want.device), want)):
            return False
    return True


def is_close(actual: Any, expected: Any) -> bool:
    """``compare(actual, expected).close``, answered at once where a first row of elements
    already differs: the search for a value among a model's many outputs (``oracle.locate``)
    mostly meets tensors of the right shape and other values."""
    if (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor) and actual.shape == expected.shape
            and actual.dim() and expected.is_floating_point() and type(actual) is torch.Tensor and actual.device.type != "meta"):
        if actual.dtype != expected.dtype:
            return False
        row = (0,) * (actual.dim() - 1)
        got, want = actual.detach()[row].to(expected.device), expected[row]
        exact = want if want.dtype == torch.float64 else want.float()
        if not _all_within(got, want, exact=exact, diff=(got.to(exact.dtype) - exact).abs()):
            return False
    return compare(actual, expected).close


_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bitwise_equal(value: Any, reference: Any) -> bool:
    """Whether two plain tensors have the same dtype, shape, device and bytes (-0.0 is not 0.0, a NaN
    equals its own bits); quantized and complex tensors are never called equal here."""
    if not (isinstance(value, torch.Tensor) and isinstance(reference, torch.Tensor)):
        return False
    if value.is_quantized or reference.is_quantized or value.dtype.is_complex or value.dtype != reference.dtype:
        return False
    if value.shape != reference.shape or value.device != reference.device:
        return False
    if value.dtype.is_floating_point:
        integer = _SAME_SIZE_INTEGER[value.element_size()]
        value, reference = value.view(integer), reference.view(integer)
    return torch.equal(value, reference)
