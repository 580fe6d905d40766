"""TorchScript with its scans reused scripts what a fresh ``torch.jit.script`` scripts: the same
code and graph, bitwise the same values, overloads and methods set on the instance included.

TorchScript compiles a class's methods once per process and per set of constants, and a parsed
definition is read only then; the comparisons that must see a definition used therefore script
classes made afresh for each side (:func:`_fresh_classes`).

No ``from __future__ import annotations`` here: TorchScript reads the overloads' annotations as
written."""

import re
import types

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from conformance.core import jitscans
from conformance.core.copies import copy_model
from conformance.core.jitscans import reusing_script_scans


class Overloaded(nn.Module):
    """A method with TorchScript overloads, which the overload scan must find every time."""

    @torch.jit._overload_method  # noqa: F811
    def pick(self, x: torch.Tensor) -> torch.Tensor: ...

    @torch.jit._overload_method  # noqa: F811
    def pick(self, x: int) -> int: ...

    def pick(self, x):  # noqa: F811
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pick(x) + self.pick(1)


def _fresh_classes() -> tuple[type, type, type]:
    """New classes (TorchScript has compiled none of them yet): a scaling block whose factor is
    a constant, so each factor is a type of its own, compiled from the one parsed definition;
    a doubling and a tripling module, whose forwards share a name."""
    class Scaling(nn.Module):
        __constants__ = ["factor"]

        def __init__(self, factor: float, channels: int) -> None:
            super().__init__()
            self.factor = factor
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, stride=1 if factor < 2 else 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.factor

    class Doubling(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Tripling(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 3

    return Scaling, Doubling, Tripling


def _fresh_model() -> nn.Module:
    scaling, doubling, tripling = _fresh_classes()
    torch.manual_seed(0)
    return nn.Sequential(scaling(0.5, 3), scaling(1.5, 3), scaling(2.5, 3), doubling(), tripling()).eval()


def halving(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x / 2


def _graph(scripted: torch.jit.ScriptModule) -> str:
    """The inlined graph, less the numbers that differ between any two scripts of a copied FX module
    (TorchScript's mangled class names, the key FX registers each generated source under)."""
    return re.sub(r"___torch_mangle_\d+\.|<eval_with_key>\.\d+", "", str(scripted.inlined_graph))


def _differences(fresh: torch.jit.ScriptModule, reused: torch.jit.ScriptModule, x: torch.Tensor) -> list[str]:
    """How a module scripted with the scans reused differs from a fresh one."""
    found = []
    if fresh.code != reused.code:
        found.append("code")
    if _graph(fresh) != _graph(reused):
        found.append("graph")
    with torch.no_grad():
        expected, got = fresh(x), reused(x)
    pairs = zip(expected.values(), got.values()) if isinstance(expected, dict) else [(expected, got)]
    if not all(torch.equal(a, b) for a, b in pairs):
        found.append("values")
    return found


def _instance_forward() -> nn.Module:
    model = _fresh_classes()[1]()
    model.forward = types.MethodType(halving, model)
    return model


@pytest.mark.parametrize("build, shape", [
    (lambda: torchvision.models.resnet18(), (1, 3, 32, 32)),
    (lambda: timm.create_model("convnext_atto"), (1, 3, 32, 32)),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32), (1, 3, 32, 32)),
    (lambda: create_feature_extractor(torchvision.models.resnet18(), {"layer1": "layer1", "layer3": "layer3"}), (1, 3, 32, 32)),
    (Overloaded, (1, 3)),
    (_instance_forward, (1, 3)),
], ids=["resnet18", "convnext_atto", "vit_tiny", "fx_extractor", "overloads", "instance_forward"])
def test_a_module_scripted_with_reused_scans_is_the_fresh_one(build, shape):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    fresh = torch.jit.script(copy_model(model))
    with reusing_script_scans() as cache:
        first = torch.jit.script(copy_model(model))
        hits = cache.hits
        second = torch.jit.script(copy_model(model))
    assert cache.hits > hits  # the second script answered from the first one's scans
    assert _differences(fresh, first, x) == [] and _differences(fresh, second, x) == []


def test_classes_compiled_from_reused_definitions_are_the_fresh_ones():
    """Each side's classes are new, so each side compiles them, the reused side from the
    definitions it parsed for the first of their types."""
    x = torch.randn(1, 3, 16, 16)
    fresh = torch.jit.script(_fresh_model())
    with reusing_script_scans() as cache:
        reused = torch.jit.script(_fresh_model())
    assert cache.hits >= 2  # the second and third scaling block's definition
    assert _differences(fresh, reused, x) == []


def test_classes_with_methods_of_one_name_are_scanned_apart():
    """Control: a method's definition is keyed by its function. Scripted after the doubling
    module, the tripling one still triples, and a module whose instance sets its own forward
    runs that forward."""
    def modules() -> list[nn.Module]:
        _, doubling, tripling = _fresh_classes()
        return [doubling(), tripling(), _instance_forward()]

    x = torch.randn(2, 3)
    fresh = [torch.jit.script(module) for module in modules()]
    with reusing_script_scans():
        reused = [torch.jit.script(module) for module in modules()]
    assert [_differences(a, b, x) for a, b in zip(fresh, reused)] == [[], [], []]
    assert torch.equal(reused[1](x), x * 3) and torch.equal(reused[2](x), x / 2)


def test_a_cache_blind_to_the_function_is_caught(monkeypatch):
    """The planted fault: definitions keyed by the method's name alone hand the tripling module
    the doubling module's forward, and the comparison sees it."""
    x = torch.randn(2, 3)
    fresh = torch.jit.script(_fresh_classes()[2]())
    monkeypatch.setattr(jitscans, "_definition_key", lambda fn, def_name, self_name, is_classmethod: (def_name, self_name))
    _, doubling, tripling = _fresh_classes()
    with reusing_script_scans():
        torch.jit.script(doubling())
        reused = torch.jit.script(tripling())
    assert _differences(fresh, reused, x) == ["code", "graph", "values"]


def test_overloads_are_found_every_time():
    with reusing_script_scans() as cache:
        scripted = [torch.jit.script(Overloaded()) for _ in range(2)]
    assert cache.hits and all(torch.equal(module(torch.ones(2)), torch.full((2,), 2.0)) for module in scripted)


def test_the_scans_are_restored():
    from torch.jit import _recursive

    before = (_recursive.get_jit_def, _recursive.get_overload_annotations)
    with reusing_script_scans():
        assert _recursive.get_jit_def is not before[0] and _recursive.get_overload_annotations is not before[1]
    assert (_recursive.get_jit_def, _recursive.get_overload_annotations) == before
