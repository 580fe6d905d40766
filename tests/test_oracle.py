"""The oracle's gradient pass: one pass answers every weighting as a pass of its own does."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from strategies.base import Tap

from conformance.truth.oracle import GradientPass, gradients


class _Reused(nn.Module):
    """A module called twice, an in-place op after a taken layer, a batch norm and a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.shared(x) + self.shared(x.flip(-1))
        x.mul_(2)  # in place, after the taken output of ``shared``
        return self.head(x.mean((2, 3)))


def _weights(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    shapes: dict[str, torch.Size] = {}
    handles = [model.get_submodule(layer).register_forward_hook(
        lambda m, a, out, layer=layer: shapes.update({layer: out.shape})) for layer in layers]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return {layer: torch.randn(shapes[layer], generator=torch.Generator().manual_seed(index)) for index, layer in enumerate(layers)}


def _equal(a: tuple[torch.Tensor, dict[str, torch.Tensor]], b: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> bool:
    return torch.equal(a[0], b[0]) and a[1].keys() == b[1].keys() and all(torch.equal(a[1][name], b[1][name]) for name in a[1])


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a convolution's backward on two threads differs from call to call
    yield
    torch.set_num_threads(threads)


def test_one_pass_gives_every_subsets_gradients_bitwise_as_a_pass_of_its_own(one_thread):
    torch.manual_seed(0)
    model = _Reused().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    layers = ["conv", "bn", "act", "shared", "head"]
    weights = _weights(model, x, layers)
    shared = GradientPass(model, x, layers=layers)
    for size in (1, 2, 5):
        for subset in itertools.combinations(layers, size):
            chosen = {layer: weights[layer] for layer in subset}
            assert _equal(shared(weights=chosen), gradients(model, x, weights=chosen)), subset
    assert not model.training and model.conv.weight.grad is None  # the model itself is not touched


def test_an_op_layer_is_taken_by_a_pass_of_its_own(one_thread):
    model = _Reused().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    added = Tap("add", op="add")  # the sum of the two calls of ``shared``
    shared = GradientPass(model, x, layers=["conv", added])
    assert shared.layers == ["conv"]
    weight = {added: torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    assert _equal(shared(weights=weight), gradients(model, x, weights=weight))


def test_control_a_pass_in_another_mode_differs(one_thread):
    """The comparison can fail: a pass taken in train mode (batch statistics) answers otherwise."""
    model = _Reused().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    weights = _weights(model, x, ["conv", "head"])
    in_train_mode = GradientPass(model.train(), x, layers=["conv", "head"])
    assert not _equal(in_train_mode(weights=weights), gradients(model.eval(), x, weights=weights))
