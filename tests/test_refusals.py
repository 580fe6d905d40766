"""A strategy's refusal of a whole model (:meth:`Strategy.refusal`) is what its ``attach`` raises
first, and the runner asks it of the pristine model instead of attaching to a copy: the same
rows, without a copy for each request the strategy refuses."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import strategies.base
from conformance.core.copies import copy_model
from conformance.running import runner
from conformance.running.runner import evaluate
from strategies import Unsupported, get_strategy, list_strategies


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"torchvision:squeezenet1_1": torchvision.models.squeezenet1_1(), "timm:resnet18": timm.create_model("resnet18")}


@pytest.mark.parametrize("name", list_strategies())
def test_a_refusal_is_what_attach_raises_first(name):
    try:
        strategy = get_strategy(name)
    except Exception as exc:  # an optional package not installed here
        pytest.skip(str(exc))
    for label, model in _models().items():
        before = {key: value.clone() for key, value in model.state_dict().items()}
        reason = strategy.refusal(model)
        assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items()), label
        if reason is None:
            continue
        with pytest.raises(Unsupported) as raised:
            strategy.attach(copy_model(model), layers=["layer1" if "resnet" in label else "features"])
        assert (str(raised.value), raised.value.layers) == (reason, None), label


class _Unasked:
    """A strategy as the runner saw it before refusals were asked: it attaches first."""

    def __init__(self, strategy: strategies.base.Strategy) -> None:
        self.strategy = strategy

    def refusal(self, model: torch.nn.Module) -> None:
        return None

    def __getattr__(self, name: str):
        return getattr(self.strategy, name)


def _rows_and_copies(monkeypatch: pytest.MonkeyPatch, *, asked: bool) -> tuple[list[tuple], int]:
    """The rows of two refusing strategies and one that serves the model, and the runner's copies
    made for requests; with ``asked`` False (the control), no refusal is asked before attaching."""
    if not asked:
        monkeypatch.setattr(runner, "get_strategy", lambda name: _Unasked(get_strategy(name)))
    copies = []
    for kind in ("deep_copy", "strategy_copy"):
        monkeypatch.setattr(runner, kind, lambda model: copies.append(1) or copy_model(model))
    rows = evaluate(_models()["torchvision:squeezenet1_1"], layers=["features", "classifier"], strategies=["hf-hidden-states", "timm", "hooks"],
                    checks=["values", "shapes"], input_shape=(1, 3, 64, 64))
    return sorted(rows[["strategy", "layer", "check", "status", "diagnosis", "detail"]].itertuples(index=False)), len(copies)


def test_refused_requests_give_the_same_rows_without_copies(monkeypatch):
    rows, copies = _rows_and_copies(monkeypatch, asked=True)
    monkeypatch.undo()
    rows_attached, copies_attached = _rows_and_copies(monkeypatch, asked=False)
    assert rows == rows_attached
    assert any(row[3] == "unsupported" and row[0] == "timm" and "not a timm model" in row[5] for row in rows)
    # control: attaching each refused request to a copy of its own, three requests for each refusing strategy
    assert copies_attached - copies == 6
