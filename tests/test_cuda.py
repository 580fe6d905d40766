"""The CUDA path; skipped cleanly where no GPU is present."""

import pytest
import torch

import pitfalls
from conformance.running.runner import evaluate

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_pitfalls_get_the_same_verdicts_on_cuda():
    rows = evaluate(pitfalls.InplaceAfterTap(), layers=["bn", "head"], strategies=["hooks", "hooks+clone", "fx"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE, device="cuda")
    got = {(r.strategy, r.layer): (r.status, r.diagnosis) for r in rows.itertuples()}
    assert got[("hooks", "bn")] == ("fail", "inplace_aliasing")
    assert got[("hooks+clone", "bn")] == ("pass", "")


def test_resnet18_on_cuda_with_every_strategy():
    import torchvision

    rows = evaluate(torchvision.models.resnet18(), layers=["layer1", "layer4"], strategies=["hooks", "hooks+clone", "ilg", "fx", "torchextractor", "stash"], device="cuda")
    assert (rows.query("check == 'values'")["status"] == "pass").all(), rows[rows.status != "pass"].to_dict("records")


def test_costs_on_cuda_use_the_allocator_and_synchronise():
    import torchvision

    from conformance.evidence.bench import measure_costs

    rows = measure_costs(torchvision.models.resnet18(), layers=["layer1"], strategies=["hooks", "fx"], device="cuda", max_time=5).rows
    value = rows.set_index(["strategy", "metric"])
    assert (rows["status"] == "ok").all(), rows[rows["status"] != "ok"]
    assert set(value.xs("peak_memory", level="metric")["method"]) == {"cuda_allocator"}
    assert value.loc[("hooks", "retained_memory"), "value"] >= 2 * 64 * 56 * 56 * 4  # the hook holds layer1's output
    assert value.loc[("fx", "floor_ratio"), "value"] < 1.5 and value.loc[("fx", "overhead"), "value"] < 0.9
