"""The op-level oracle: torchvision's FX node names without tracing, values bitwise those of the
hook oracle, and the nodes the feature-extraction guide names."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.feature_extraction import get_graph_node_names

import pitfalls
from conformance.truth.layers import resolve_layers
from conformance.truth.nodes import record
from conformance.truth.oracle import capture
from conformance.running.runner import evaluate
from conformance.zoo.specs import QUICK_ZOO, build_model, resolve_model
from strategies import list_strategies

GUIDE_NODES = ["layer1.2.relu_2", "layer2.3.relu_2", "layer3.5.relu_2", "layer4.2.relu_2", "layer1.0.add", "layer1"]


def _built(reference):
    spec = resolve_model(reference)
    return spec, build_model(spec=spec, seed=0), torch.randn(1, *spec.input_shape[1:], generator=torch.Generator().manual_seed(0))


@pytest.mark.zoo
@pytest.mark.parametrize("reference", QUICK_ZOO)
def test_every_tensor_node_is_named_as_torchvision_names_it(reference):
    """In both modes, the recorder's tensor nodes are FX's nodes, and FX has no node the
    recorder misses but ``_assert`` on a Python bool (which an eager pass cannot see)."""
    spec, model, x = _built(reference)
    for mode, index in (("train", 0), ("eval", 1)):
        model.train(mode == "train")
        fx = get_graph_node_names(model)[index]
        with torch.no_grad():
            table = record(model, x)
        assert [n.name for n in table.nodes if n.tensor and n.name not in fx] == [], mode
        assert [n for n in fx if n not in table and "_assert" not in n] == [], mode


@pytest.mark.zoo
@pytest.mark.parametrize("reference", QUICK_ZOO)
def test_every_module_call_agrees_bitwise_with_the_hook_oracle(reference):
    spec, model, x = _built(reference)
    with torch.no_grad():
        plain = model(x)
        calls = [n for n in record(model, x).nodes if n.kind == "module"]
        table = record(model, x, wanted=[n.name for n in calls])
    truth = capture(model, x, layers=sorted({n.module for n in calls}))
    assert torch.equal(table.output, plain)
    for node in calls:
        assert torch.equal(table.values[node.name], truth.layers[node.module].calls[node.call - 1]), node


@pytest.mark.zoo
def test_the_guides_resnet50_nodes_get_a_verdict_from_every_strategy():
    """The return nodes torchvision's guide names, plus a functional op and a truncated name:
    each is found, and every strategy gives a verdict or says why it cannot express it."""
    spec, model, _ = _built("torchvision:resnet50")
    taps = resolve_layers(model, spec, GUIDE_NODES)
    assert [tap.describe() for tap in taps[:2]] == ["call 3 of 3 of module layer1.2.relu", "call 3 of 3 of module layer2.3.relu"]
    assert taps[4].describe() == "op add in layer1.0" and taps[5].describe() == "output of module layer1"
    rows = evaluate(model, layers=GUIDE_NODES, strategies=list_strategies(), checks=["values"], input_shape=(1, 3, 224, 224), name="resnet50")
    assert set(map(tuple, rows[["strategy", "layer"]].values)) == {(s, layer) for s in list_strategies() for layer in GUIDE_NODES}
    assert (rows["status"] != "error").all(), rows[rows.status == "error"].to_dict("records")
    refused = rows[rows.status == "unsupported"]
    assert refused["detail"].str.len().gt(20).all()
    fx = rows.query("strategy == 'fx'").set_index("layer")
    assert (fx.drop(index="layer1.0.add")["status"] == "pass").all()
    # FX records out += identity as a plain add, and ReLU(inplace=True) then rewrites that tensor:
    # the guide's functional-op node comes back post-ReLU
    assert tuple(fx.loc["layer1.0.add", ["status", "diagnosis"]]) == ("fail", "inplace_aliasing")
    assert rows.query("strategy == 'hooks' and layer == 'layer1.0.add'")["detail"].str.contains("op add in layer1.0").all()


def test_the_recorder_follows_control_flow_fx_cannot_trace():
    """The branch on the sign of a sum runs for one of x and -x: the node exists for that one only."""
    model = pitfalls.DataDependentControlFlow().eval()
    x = torch.randn(*pitfalls.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        taken = x if model.first(x).sum() > 0 else -x
        assert "mul" not in record(model, -taken)
        table = record(model, taken, wanted=["mul"])
        assert torch.equal(table.values["mul"], model.first(taken) * 2.0)


def test_a_model_the_tracked_sizes_would_change_is_recorded_without_them():
    """The guard: the recorder's pass must give the model's own output, bitwise."""
    model = pitfalls.SizeTypeBranch().eval()
    x = torch.randn(*pitfalls.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(record(model, x).output, model(x))  # the negative control: tracking changes this model
        expected = model.first(x) * 2.0
    truth = capture(model, x, layers=resolve_layers(model, resolve_model(f"{pitfalls.__file__}:size_type_branch"), ["mul"]))
    assert torch.equal(truth.layers["mul"].value, expected)
