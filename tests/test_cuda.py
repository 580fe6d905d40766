"""The CUDA path; skipped cleanly where no GPU is present."""

import pytest
import torch

import pitfalls
from conformance.runner import evaluate

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
