"""The comparison with the truth: allclose's verdict in one pass, the error and the scale it reports."""

import math

import pytest
import torch

from conformance.core.compare import compare, is_close, same_bits, tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_verdict_is_allclose_at_the_dtype_tolerance(dtype):
    generator = torch.Generator().manual_seed(0)
    want = torch.randn(64, 33, generator=generator).to(dtype)
    rtol, atol = tolerance(dtype, torch.device("cpu"))
    for relative in (0.0, 0.3, 0.9, 1.1, 3.0):  # errors in units of the tolerance at each element
        got = (want.double() + relative * (atol + rtol * want.double().abs()) * torch.sign(torch.randn(want.shape, generator=generator))).to(dtype)
        result = compare(got, want)
        assert result.close == torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True), (dtype, relative)
        assert math.isclose(result.max_abs_err, (got.double() - want.double()).abs().max().item(), rel_tol=1e-3, abs_tol=1e-12)
        assert math.isclose(result.scale, want.double().square().mean().sqrt().item(), rel_tol=1e-6)
    assert not compare(want + 1, want).close and compare(want.clone(), want).bitwise


def test_nan_against_nan_and_equal_infinities_are_close_and_anything_else_is_not():
    want = torch.tensor([1.0, math.nan, math.inf, -math.inf])
    assert compare(want.clone(), want).close
    assert not compare(torch.tensor([1.0, 0.0, math.inf, -math.inf]), want).close
    assert not compare(torch.tensor([1.0, math.nan, -math.inf, -math.inf]), want).close
    assert not compare(torch.tensor([1.0, math.nan, math.inf, -math.inf]).double(), want).close  # another dtype is never close


def test_quantized_and_integer_values_must_be_equal():
    values = torch.quantize_per_tensor(torch.linspace(-1, 1, 20), scale=0.1, zero_point=3, dtype=torch.quint8)
    assert compare(values.clone(), values).bitwise
    other = torch.quantize_per_tensor(torch.linspace(-1, 1, 20), scale=0.1, zero_point=4, dtype=torch.quint8)
    assert not compare(other, values).close
    assert not compare(torch.arange(5) + 1, torch.arange(5)).close


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_quick_verdict_is_the_comparisons_wherever_the_values_differ(dtype):
    """``is_close`` rejects on a first row of elements before comparing the whole: its verdict is
    compare's for errors inside and outside that row, within and beyond tolerance, NaNs, another
    dtype and strided views (a first-row check stricter or looser than allclose fails it)."""
    generator = torch.Generator().manual_seed(1)
    want = torch.randn(2, 3, 5, 7, generator=generator).to(dtype)
    rtol, atol = tolerance(dtype, torch.device("cpu"))
    step = (atol + rtol * want.double().abs()).to(torch.float64)

    def nudged(where, relative):
        got = want.double().clone()
        got[where] += relative * step[where]
        return got.to(dtype)

    pairs = [(want.clone(), want), (nudged((0, 0, 0), 0.5), want), (nudged((0, 0, 0), 4.0), want), (nudged((1, 2, 4), 4.0), want),
             (nudged((1, 2, 4), 0.5), want), (want.double(), want.double() if dtype == torch.float64 else want), (want + 1, want),
             (want.permute(0, 2, 3, 1), want.permute(0, 2, 3, 1).contiguous()), (want.permute(0, 2, 3, 1) * 2, want.permute(0, 2, 3, 1)),
             (want[0, 0, 0], want[0, 0, 0].clone()), (want.sum(), want.sum().clone()), ((want, want), (want.clone(), want + 1))]
    nan = want.clone()
    nan[0, 0, 0, 0] = nan[1, 1, 1, 1] = math.nan
    pairs += [(nan.clone(), nan), (want, nan)]
    verdicts = [is_close(got, expected) for got, expected in pairs]
    assert verdicts == [compare(got, expected).close for got, expected in pairs]
    assert True in verdicts and False in verdicts


def test_same_bits_is_the_comparisons_bitwise_verdict():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    nan = torch.tensor([float("nan"), 1.0])
    pairs = [
        (x, x.clone()), (x, x + 1e-7), (x, x.double()), (x, x[:2]), (torch.tensor([0.0]), torch.tensor([-0.0])), (nan, nan.clone()),
        ({"a": x, "b": (x, 3)}, {"a": x.clone(), "b": (x.clone(), 3)}), ({"a": x, "b": (x, 3)}, {"a": x.clone(), "b": (x.clone(), 4)}),
        ([x], (x,)), (x.to("meta"), x), (torch.arange(4), torch.arange(4)), (torch.arange(4), torch.arange(4) + 1), (None, None), (2, 2.0),
    ]
    verdicts = [same_bits(a, b) for a, b in pairs]
    assert verdicts == [compare(a, b).bitwise for a, b in pairs]
    assert True in verdicts and False in verdicts  # both verdicts are exercised
