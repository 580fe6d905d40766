"""The latency of each strategy as pytest-benchmark benchmarks, the pytest front of ``conformance bench``.

    pytest tests/benchmarks --benchmark-json=costs.json
    pytest tests/benchmarks --benchmark-autosave
    pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:5%

Each benchmark times one contestant (the plain forward, the floor or a strategy) on one
(model, layer request); benchmarks of one request share a group, so pytest-benchmark's
table compares them. ``extra_info`` records the model, layers, strategy, device and
threads. The module holds the timing lock: it never times alongside ``conformance bench``.
"""

from __future__ import annotations

import functools

import pytest
import torch

from conformance.evidence.bench import FLOOR, FORWARD, contestant_call, timing_lock
from conformance.truth.layers import resolve_layers
from conformance.zoo.specs import build_model, resolve_model
from strategies import Unsupported, list_strategies

REQUESTS = [("torchvision:resnet18", ("layer1",)), ("timm:resnet18", ("@stages",))]
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.fixture(scope="module", autouse=True)
def _one_timing_run_at_a_time():
    with timing_lock(on_wait=print):
        yield


@functools.lru_cache(maxsize=None)
def _model(reference: str, device: str):
    spec = resolve_model(reference)
    return spec, build_model(spec=spec, seed=0).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [FORWARD, FLOOR, *list_strategies()])
@pytest.mark.parametrize("reference, request_layers", REQUESTS, ids=[f"{r}[{' '.join(l)}]" for r, l in REQUESTS])
def test_latency(benchmark, reference, request_layers, name, device):
    spec, model = _model(reference, device)
    layers = resolve_layers(model, spec, request_layers)
    try:
        call, close = contestant_call(name, model, layers=layers)
    except Unsupported as exc:
        pytest.skip(f"{name}: {exc}")
    x = torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(0)).to(device)

    def run() -> object:
        result = call(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    benchmark.group = f"{reference} [{' '.join(layers)}] {device}"
    benchmark.extra_info.update(model=reference, layers=" ".join(layers), strategy=name, device=device, threads=torch.get_num_threads())
    try:
        with torch.no_grad():
            result = benchmark(run)
    finally:
        close()
    assert result is None if name == FLOOR else result is not None
