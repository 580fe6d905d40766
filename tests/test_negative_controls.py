"""Negative controls: a deliberately corrupted strategy must be caught by each check."""

from __future__ import annotations

import pytest
import torch

import pitfalls
from conformance.runner import evaluate
from strategies import Extraction, Extractor, Strategy, get_strategy, register_strategy
from strategies._registry import _registry

LAYERS = ["first", "second"]


class _Corrupted(Extractor):
    def __init__(self, inner: Extractor, corrupt) -> None:
        self.inner, self.corrupt, self.module, self.calls = inner, corrupt, inner.module, []

    def __call__(self, x: torch.Tensor) -> Extraction:
        extraction = self.inner(x)
        self.calls.append({k: v.clone() for k, v in extraction.features.items()})
        return self.corrupt(self, extraction)

    def close(self) -> None:
        self.inner.close()


def corrupted(corrupt, *, on_attach=None) -> type[Strategy]:
    class CorruptedStrategy(Strategy):
        def attach(self, model, *, layers):
            if on_attach:
                on_attach(model)
            return _Corrupted(get_strategy("hooks+clone").attach(model, layers=layers), corrupt)

    return CorruptedStrategy


def _noise(ex, extraction):
    return Extraction({k: v + 1e-3 * torch.randn_like(v) for k, v in extraction.features.items()}, extraction.output)


def _other_layer(ex, extraction):
    features = dict(extraction.features)
    features["first"] = features["second"]
    return Extraction(features, extraction.output)


def _stale(ex, extraction):
    return Extraction(ex.calls[0], extraction.output)


def _flattened(ex, extraction):
    return Extraction({k: v.flatten(1) for k, v in extraction.features.items()}, extraction.output)


def _double(ex, extraction):
    return Extraction({k: v.double() for k, v in extraction.features.items()}, extraction.output)


def _reversed(ex, extraction):
    return Extraction(dict(reversed(list(extraction.features.items()))), extraction.output)


def _dropped(ex, extraction):
    return Extraction({"first": extraction.features["first"]}, extraction.output)


def _wrong_output(ex, extraction):
    return Extraction(extraction.features, extraction.output + 1.0)


def _tamper_model_output(model):
    model.second.register_forward_hook(lambda module, args, output: output * 2.0)


def _tamper_weights(model):
    with torch.no_grad():
        model.first.weight.add_(1e-3)


def _unchanged(ex, extraction):
    return extraction


FAULTS = {
    # name: (corrupt, on_attach, check that must fail, layer, expected diagnosis)
    "noise": (_noise, None, "values", "first", ""),
    "other_layer": (_other_layer, None, "values", "first", "wrong_layer"),
    "stale": (_stale, None, "values", "first", "stale"),
    "flattened": (_flattened, None, "shape", "first", "shape_mismatch"),
    "double": (_double, None, "dtype", "first", "dtype_mismatch"),
    "reversed": (_reversed, None, "keys", "*", "order"),
    "dropped": (_dropped, None, "keys", "*", "missing"),
    "wrong_output": (_wrong_output, None, "model_output", "*", "output_changed"),
    "tampered_model": (_unchanged, _tamper_model_output, "model_output", "*", "output_changed"),
    "tampered_weights": (_unchanged, _tamper_weights, "weights", "*", "weights_differ"),
}


@pytest.fixture
def register():
    added = []

    def _register(name, cls):
        register_strategy(name, cls, clobber=True)
        added.append(name)

    yield _register
    for name in added:
        _registry.pop(name, None)


@pytest.mark.parametrize("fault", FAULTS)
def test_planted_fault_is_caught(fault, register):
    corrupt, on_attach, check, layer, diagnosis = FAULTS[fault]
    register(f"corrupted-{fault}", corrupted(corrupt, on_attach=on_attach))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=[f"corrupted-{fault}"], input_shape=pitfalls.INPUT_SHAPE)
    row = rows[(rows.check == check) & (rows.layer == layer)].iloc[0]
    assert row.status == "fail", row.to_dict()
    assert row.diagnosis == diagnosis, row.to_dict()


def test_noise_is_measured_not_just_flagged(register):
    register("corrupted-noise", corrupted(_noise))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-noise"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["max_abs_err"] > 1e-5).all() and not rows["bitwise"].any()


def test_the_wrapper_itself_changes_nothing(register):
    """The control for the controls: the same wrapper with no fault passes everything."""
    register("corrupted-none", corrupted(_unchanged))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-none"], input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["status"] == "pass").all(), rows[rows.status != "pass"].to_dict("records")


def test_a_crashing_strategy_is_a_row_with_a_reason(register):
    class Crashing(Strategy):
        def attach(self, model, *, layers):
            raise RuntimeError("boom")

    register("crashing", Crashing)
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["crashing", "hooks"], input_shape=pitfalls.INPUT_SHAPE)
    crashed = rows[rows.strategy == "crashing"]
    assert (crashed["status"] == "error").all() and crashed["detail"].str.contains("RuntimeError: boom").all()
    assert (rows[rows.strategy == "hooks"]["status"] == "pass").all()


def test_a_hanging_strategy_hits_the_cell_time_limit(register):
    import time

    from conformance.runner import RunConfig, Timings, _units
    from conformance.zoo import ModelSpec

    class Hanging(Strategy):
        def attach(self, model, *, layers):
            time.sleep(30)

    register("hanging", Hanging)
    spec = ModelSpec("user", "plain", pitfalls.INPUT_SHAPE, pitfalls.Plain)
    config = RunConfig(models=[spec], layers=LAYERS, strategies=["hanging"], checks=["values"], cell_timeout=0.5)
    started = time.perf_counter()
    [(name, results)] = list(_units(spec, ["hanging"], config, Timings()))
    assert time.perf_counter() - started < 10
    assert {(r.status, r.diagnosis) for r in results} == {("error", "timeout")}


def test_nested_timing_phases_are_not_counted_twice():
    import time

    from conformance.runner import Timings

    timings = Timings()
    with timings.phase("checks"):
        time.sleep(0.05)
        with timings.phase("forward"):
            time.sleep(0.1)
    assert 0.09 < timings.seconds["forward"] < 0.2
    assert 0.04 < timings.seconds["checks"] < 0.09
