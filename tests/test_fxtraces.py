"""A reused FX trace builds the extractor a fresh ``create_feature_extractor`` call builds: the same
generated code in both modes and bitwise the same values, for torchvision's and timm's FX paths."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
import torchvision
from timm.models import create_feature_extractor as timm_create_feature_extractor
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import pitfalls
from conformance.core import fxtraces
from conformance.core.copies import copy_model
from conformance.core.fxtraces import reusing_fx_traces


class Flagged(nn.Module):
    """A module whose traced graph depends on a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.doubled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y * 2 if self.doubled else y)


class Constant(nn.Module):
    """A module whose trace sets a tensor constant on the model it traces."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1))


def _generated_from(module: nn.Module) -> str:
    """Where the generated forward says it comes from (its file name, less FX's counter)."""
    return type(module).forward.__code__.co_filename.partition(" from ")[2]


def _differences(fresh: nn.Module, reused: nn.Module, x: torch.Tensor) -> list[str]:
    """How an extractor built from a reused trace differs from a fresh one."""
    found = []
    for mode in ("train", "eval"):
        getattr(fresh, mode)(), getattr(reused, mode)()
        if fresh.code != reused.code:
            found.append(f"{mode} code")
        if _generated_from(fresh) != _generated_from(reused):
            found.append(f"{mode} code's origin")
    with torch.no_grad():
        expected, got = fresh(x), reused(x)
    for name, value in expected.items():
        same = torch.equal(value, got[name]) if isinstance(value, torch.Tensor) else value == got[name]
        if not same:
            found.append(f"value of {name}")
    return found


def _requests(model: nn.Module) -> list[list[str]]:
    nodes = get_graph_node_names(model)[1][1:-1]
    return [[node] for node in nodes[:: max(1, len(nodes) // 6)]] + [nodes[:: max(1, len(nodes) // 4)]]


@pytest.mark.parametrize("build, shape", [
    (lambda: torchvision.models.resnet18(), (1, 3, 64, 64)),
    (lambda: timm.create_model("convnext_atto"), (1, 3, 64, 64)),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64), (1, 3, 64, 64)),
    (Flagged, (1, 3, 16, 16)),
], ids=["resnet18", "convnext_atto", "vit_tiny", "flagged"])
@pytest.mark.parametrize("create", [create_feature_extractor, timm_create_feature_extractor], ids=["torchvision", "timm"])
def test_an_extractor_from_a_reused_trace_is_the_fresh_one(build, shape, create):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    requests = _requests(model)
    fresh = [create(copy_model(model), {node: node for node in request}) for request in requests]
    with reusing_fx_traces() as cache:
        reused = [create(copy_model(model), {node: node for node in request}) for request in requests]
    assert (cache.misses, cache.hits) == (2, 2 * len(requests) - 2)
    assert [_differences(a, b, x) for a, b in zip(fresh, reused)] == [[]] * len(requests)


def test_another_structure_is_traced_again():
    """Control: a flag the trace reads is part of the key; a cache that ignored it would hand
    the second model the first one's graph, and the comparison would see it."""
    model, x = Flagged().eval(), torch.randn(1, 3, 8, 8)
    doubled = copy_model(model)
    doubled.doubled = True
    fresh = create_feature_extractor(copy_model(doubled), {"relu": "relu"})
    with reusing_fx_traces() as cache:
        create_feature_extractor(copy_model(model), {"relu": "relu"})
        reused = create_feature_extractor(copy_model(doubled), {"relu": "relu"})
    assert cache.hits == 0 and _differences(fresh, reused, x) == []


def test_a_cache_blind_to_attributes_is_caught(monkeypatch):
    model, x = Flagged().eval(), torch.randn(1, 3, 8, 8)
    doubled = copy_model(model)
    doubled.doubled = True
    fresh = create_feature_extractor(copy_model(doubled), {"relu": "relu"})
    monkeypatch.setattr(fxtraces, "structure", lambda module: type(module))
    with reusing_fx_traces() as cache:
        create_feature_extractor(copy_model(model), {"relu": "relu"})
        reused = create_feature_extractor(copy_model(doubled), {"relu": "relu"})
    assert cache.hits == 3 and _differences(fresh, reused, x) == ["train code", "eval code", "value of relu"]


def test_a_graph_reading_what_the_new_model_lacks_is_traced_again():
    """The first trace set a tensor constant on its own copy; another copy lacks it. (FX numbers
    such constants by what the model already has, so two fresh extractors' code differs too:
    the values are compared.)"""
    model, x = Constant().eval(), torch.randn(1, 3, 8, 8)
    with reusing_fx_traces() as cache:
        create_feature_extractor(copy_model(model), {"relu": "relu"})
        extractor = create_feature_extractor(copy_model(model), {"relu": "relu"})
    assert cache.hits == 0 and cache.misses == 4
    fresh = create_feature_extractor(copy_model(model), {"relu": "relu"})
    assert [difference for difference in _differences(fresh, extractor, x) if not difference.endswith("code")] == []


def _flags(module: nn.Module) -> dict[str, Any]:
    return {f"{name}.{key}": value for name, sub in module.named_modules() for key, value in vars(sub).items() if type(value) is bool}


@pytest.mark.parametrize("remembered", [False, True], ids=["not remembered", "control: remembered"])
def test_a_trace_that_changes_its_model_is_not_remembered(remembered, monkeypatch):
    """Glow's ActNorm marks itself initialised, also when traced: a copy whose extractor was made
    with the cache on is left as a fresh trace leaves its copy. Control: a cache that remembers
    such a trace (blind to the flag) gives the next copy the graph but not the change."""
    if remembered:
        monkeypatch.setattr(fxtraces, "structure", lambda module: tuple((name, type(sub), sub.training) for name, sub in module.named_modules()))
    model, x = pitfalls.FirstCallInit().eval(), torch.randn(*pitfalls.INPUT_SHAPE)
    fresh_copy, reused_copy = copy_model(model), copy_model(model)
    fresh = create_feature_extractor(fresh_copy, {"head": "head"})
    with reusing_fx_traces():
        create_feature_extractor(copy_model(model), {"head": "head"})
        reused = create_feature_extractor(reused_copy, {"head": "head"})
    assert _differences(fresh, reused, x) == []
    assert (_flags(reused_copy) != _flags(fresh_copy)) is remembered


def test_the_tracer_is_restored():
    from torchvision.models.feature_extraction import NodePathTracer

    before = NodePathTracer.trace
    with reusing_fx_traces():
        assert NodePathTracer.trace is not before
    assert NodePathTracer.trace is before


def test_a_source_compiled_before_is_executed_again_and_still_read_back():
    """The second extractor of one request runs the code object compiled for the first; its source
    is still found by the file name the code carries (what TorchScript reads to script it)."""
    import inspect

    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32)
    with reusing_fx_traces() as cache:
        first = create_feature_extractor(copy_model(model), {"layer1": "layer1"})
        second = create_feature_extractor(copy_model(model), {"layer1": "layer1"})
    assert type(first).forward.__code__ is type(second).forward.__code__ and cache.code
    assert inspect.getsource(type(second).forward).strip() == second.code.strip()
    scripted = torch.jit.script(second)
    with torch.no_grad():
        assert torch.equal(scripted(x)["layer1"], create_feature_extractor(copy_model(model), {"layer1": "layer1"})(x)["layer1"])


def test_compiling_is_restored():
    from torch.fx import graph_module

    before = graph_module._exec_with_source
    with reusing_fx_traces():
        assert graph_module._exec_with_source is not before
    assert graph_module._exec_with_source is before


class Signed(nn.Module):
    """Two graphs that differ only in a constant's sign: 0.0 and -0.0 are equal, but written apart."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + self.offset


def _graphs(*models: nn.Module) -> list[fx.Graph]:
    """Graphs as ``create_feature_extractor`` leaves them: traced, then cut to some return nodes."""
    graphs = []
    for model in models or (torchvision.models.resnet18(), timm.create_model("vit_tiny_patch16_224", img_size=32), Signed(0.0), Signed(-0.0)):
        for request in _requests(model.eval())[:3]:
            extractor = create_feature_extractor(model, {node: node for node in request})
            graphs += [extractor.train_graph, extractor.eval_graph]
    return graphs


def _same_code(expected: fx.graph.PythonCode, got: fx.graph.PythonCode) -> bool:
    return (expected.src == got.src and expected._lineno_map == got._lineno_map and expected._prologue_start == got._prologue_start
            and expected.globals.keys() == got.globals.keys() and all(got.globals[name] is value for name, value in expected.globals.items()))


def test_generated_python_is_fx_own_for_every_graph():
    """Each graph's source, written once and then reused, is what FX writes: the same text, line
    map and globals (the very objects); and the globals handed out are a dict of their own."""
    graphs = _graphs()
    expected = [graph.python_code(root_module="self") for graph in graphs]
    with reusing_fx_traces() as cache:
        first = [graph.python_code(root_module="self") for graph in graphs]
        again = [graph.python_code(root_module="self") for graph in graphs]
    assert len(cache.sources) < len(graphs)  # two graphs' sources are the same code (the same request in train and eval mode)
    assert all(_same_code(a, b) and _same_code(a, c) for a, b, c in zip(expected, first, again))
    assert all(b.globals is not c.globals for b, c in zip(first, again))


def test_a_key_blind_to_the_sign_of_zero_is_caught(monkeypatch):
    """The planted fault: floats keyed by value make 0.0 and -0.0 one key, so the second model
    gets the first one's source; the comparison sees it."""
    monkeypatch.setattr(fxtraces, "_VALUES", (*fxtraces._VALUES, float))
    extractors = [create_feature_extractor(Signed(offset), {"add": "add"}) for offset in (0.0, -0.0)]
    graphs = [graph for extractor in extractors for graph in (extractor.train_graph, extractor.eval_graph)]
    expected = [graph.python_code(root_module="self") for graph in graphs]
    assert "-0.0" in expected[2].src and "-0.0" not in expected[0].src
    with reusing_fx_traces():
        got = [graph.python_code(root_module="self") for graph in graphs]
    assert [_same_code(a, b) for a, b in zip(expected, got)] == [True, True, False, False]
