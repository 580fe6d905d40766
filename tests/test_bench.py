"""The cost bench: its statistics, its floor, its lock, and a planted cost for every metric."""

from __future__ import annotations

import math
import random
import threading

import pytest
import torch
from torch import nn

import costly
from conformance.evidence.bench import FLOOR, FORWARD, ORACLE, Floor, contestant_call, measure_costs, median_interval, summarise_timing, timing_lock


def test_median_interval_uses_the_binomial_order_statistics():
    values = list(range(1, 21))
    assert median_interval(values) == (10.5, 6, 15)  # n = 20: the 6th and 15th values
    assert median_interval([3, 1, 2, 6, 5, 4]) == (3.5, 1, 6)  # n = 6: the extremes (96.9 %)
    median, low, high = median_interval([1, 2, 3, 4, 5])
    assert median == 3 and math.isnan(low) and math.isnan(high)  # too few for a 95 % interval


def _noisy(mean: float, *, rounds: int = 40, seed: int = 0) -> list[float]:
    generator = random.Random(seed)
    return [mean * (1 + generator.gauss(0, 0.03)) for _ in range(rounds)]


def test_rank_ties_what_noise_cannot_separate_and_separates_real_differences():
    samples = {FORWARD: _noisy(10.0, seed=1), FLOOR: _noisy(3.0, seed=2),
               "a": _noisy(3.0, seed=3), "b": _noisy(3.0, seed=4), "slow": _noisy(6.0, seed=5)}
    rows = {(r["strategy"], r["metric"]): r for r in summarise_timing(samples)}
    assert rows[("a", "rank")]["value"] == rows[("b", "rank")]["value"] == 1
    tied = rows[("b", "rank")] if rows[("b", "rank")]["detail"] else rows[("a", "rank")]
    assert tied["detail"].startswith("indistinguishable from ")
    assert rows[("slow", "rank")]["value"] == 3 and rows[("slow", "rank")]["detail"] == ""
    assert rows[("slow", "overhead")]["ci_low"] < 0.6 < rows[("slow", "overhead")]["ci_high"]
    assert rows[("a", "floor_ratio")]["ci_low"] < 1 < rows[("a", "floor_ratio")]["ci_high"]


def test_the_oracle_is_timed_against_the_forward_and_never_ranked():
    samples = {FORWARD: _noisy(10.0, seed=1), FLOOR: _noisy(3.0, seed=2), ORACLE: _noisy(20.0, seed=6), "a": _noisy(3.0, seed=3)}
    rows = {(r["strategy"], r["metric"]): r for r in summarise_timing(samples)}
    assert rows[(ORACLE, "overhead")]["ci_low"] < 2.0 < rows[(ORACLE, "overhead")]["ci_high"]
    assert (ORACLE, "rank") not in rows and rows[("a", "rank")]["value"] == 1


def test_floor_stops_once_every_requested_layer_has_returned():
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second, self.unused = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.second(self.first(x))
            raise RuntimeError("ran past the request")

    x = torch.ones(1, 4)
    assert Floor(Exploding(), layers=["second", "first"])(x) is None
    with pytest.raises(RuntimeError, match="ran past the request"):  # the control: the model itself runs on
        Exploding()(x)
    with pytest.raises(RuntimeError, match="ran past the request"):  # a requested layer never runs: so does the floor
        Floor(Exploding(), layers=["first", "unused"])(x)


def test_timing_lock_lets_one_timing_run_at_a_time(tmp_path):
    lock = tmp_path / "timing.lock"
    messages = []
    with timing_lock(path=lock):
        with pytest.raises(TimeoutError, match="still held"):
            with timing_lock(path=lock, timeout=0.3, on_wait=messages.append):
                pass
    assert messages and "pid" in messages[0]
    with timing_lock(path=lock, timeout=0.3):  # released: free again
        pass


def test_timing_lock_waits_for_the_holder_to_finish(tmp_path):
    lock = tmp_path / "timing.lock"
    released = threading.Event()
    order = []

    def holder() -> None:
        with timing_lock(path=lock):
            order.append("held")
            released.wait(5)
            order.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    while not order:
        pass
    threading.Timer(0.3, released.set).start()
    with timing_lock(path=lock, timeout=5):
        order.append("second")
    thread.join()
    assert order == ["held", "released", "second"]


@pytest.fixture
def planted(register):
    for name, cls in costly.PLANTED.items():
        register(name, cls)


def _costs(strategies, *, max_time=4, **kwargs):
    frame = measure_costs(costly.tower(), layers=["blocks.7"], strategies=strategies, input_shape=costly.INPUT_SHAPE, max_time=max_time, **kwargs).rows
    return frame.set_index(["strategy", "metric"])


def test_every_metric_finds_its_planted_cost(planted):
    rows = _costs(["hooks+clone", *costly.PLANTED], min_rounds=30)  # inner order statistics, even on a loaded machine
    value = rows["value"]
    assert (rows["status"] == "ok").all(), rows[rows["status"] != "ok"]
    assert value[("hooks+clone", "overhead")] < 1.3  # the control, by its median: its interval widens with the machine's load
    assert value[("twice", "overhead")] > 1.4 and value[("twice", "floor_ratio")] > 1.4  # about 2 and 2.2
    assert value[("twice", "rank")] > value[("hooks+clone", "rank")]
    assert value[("slow_build", "build_time")] >= costly.BUILD_SLEEP > 10 * value[("hooks+clone", "build_time")]
    assert value[("hoarder", "retained_memory")] >= 0.9 * costly.HOARD_BYTES > 10 * abs(value[("hooks+clone", "retained_memory")])
    assert value[("hoarder", "peak_memory")] >= 0.9 * costly.HOARD_BYTES > value[("hooks+clone", "peak_memory")]
    assert value[("doubled", "params_retained")] == pytest.approx(2.0) and value[("hooks+clone", "params_retained")] == 1.0
    assert (rows.xs("latency", level="metric")["unit"] == "s").all()


def test_rounds_adapt_to_the_precision_asked_for():
    """A loose precision stops at the minimum (6 rounds: the fewest with a 95 % interval); a
    tight one goes on until the budget, 15 s, which leaves room for more even at 2 s a round."""
    loose = _costs(["hooks"], precision=100, min_rounds=6)
    tight = _costs(["hooks"], precision=1e-6, min_rounds=6, max_time=15)
    assert loose.loc[("hooks", "latency"), "rounds"] == 6
    assert tight.loc[("hooks", "latency"), "rounds"] > 6  # went on until the time budget


def test_a_strategy_that_cannot_be_measured_is_a_row_with_the_reason(register):
    class Broken(costly.Twice):
        def attach(self, model, *, layers, tracer_kwargs=None):
            raise RuntimeError("attach exploded")

    register("broken", Broken)
    rows = _costs(["broken", "timm", "hooks"])
    assert set(rows.loc["broken", "status"]) == {"error"}
    assert "attach exploded" in rows.loc[("broken", "latency"), "detail"]
    assert set(rows.loc["timm", "status"]) == {"unsupported"}
    assert rows.loc[("hooks", "latency"), "status"] == "ok"


@pytest.mark.zoo
def test_resnet18_layer1_sanity():
    """fx and ilg prune after layer1: they run its five convolutions of the twenty and keep its
    parameters only; hooks run the whole model and hold the last layer1 output. What that costs
    in time is the benchmarks' to print (``tests/benchmarks``, ``conformance bench``), not a
    test's to assert: a timing ratio moves with whatever else the machine runs."""
    import torchvision

    model = torchvision.models.resnet18()
    convolutions = {name: _convolutions_run(name, model, layers=["layer1"]) for name in ("fx", "ilg", "hooks")}
    assert convolutions == {"fx": 5, "ilg": 5, "hooks": 20}
    rows = measure_costs(model, layers=["layer1"], strategies=["fx", "ilg", "hooks"], max_time=2).rows
    value = rows.set_index(["strategy", "metric"])["value"]
    for name in ("fx", "ilg"):
        assert value[(name, "params_retained")] < 0.05  # everything after layer1 is pruned
    assert value[("hooks", "retained_memory")] > 2 * 64 * 56 * 56 * 4 * 0.9  # the last layer1 output, held by the hook


def _convolutions_run(name: str, model: nn.Module, *, layers: list[str]) -> int:
    """How many convolutions one call of contestant ``name`` runs."""
    call, close = contestant_call(name, model, layers=layers)
    run: list[nn.Module] = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, output: run.append(module) if isinstance(module, nn.Conv2d) else None)
    try:
        with torch.no_grad():
            call(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    finally:
        handle.remove()
        close()
    return len(run)
