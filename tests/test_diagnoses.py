"""Every diagnosis names the mechanism its planted fault plants, and no other (the table in
``conformance/judging/diagnoses.py``). The planted faults of reshaped, cast, stale, wrong_layer between
requested layers and unexplained are in test_negative_controls; of reformatted, in test_zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pitfalls
from conformance.running.runner import evaluate
from faults import corrupted
from strategies import Extraction

# (pitfall model, requested layers, strategy, layer, diagnosis): real strategies doing it
REAL = [
    ("inplace_after_tap", ["bn", "head"], "hooks", "bn", "inplace_aliasing"),
    ("reused_module", ["act"], "fx", "act", "reused_module"),
    ("dead_inplace", ["first", "second"], "fx", "second", "dead_code_eliminated"),
    ("dead_inplace", ["first", "second"], "ilg", "second", "children_not_chained"),  # the same value, ilg's mechanism
    ("inplace_in_child", ["head"], "fx", "head", "dead_code_eliminated"),
    ("wrapped_mutation", ["second", "head"], "fx", "head", "dead_code_eliminated"),  # both calls dropped: neither alone gives it
    ("keyword_child", ["block", "head"], "ilg", "block", "kwargs_dropped"),
    ("keyword_child", ["block", "head"], "ilg", "head", "kwargs_dropped"),
    ("kwargs_and_tuples", ["block"], "ilg", "block", "kwargs_dropped"),
    ("functional_between", ["first", "second"], "ilg", "second", "children_not_chained"),
    ("kwargs_and_tuples", ["block"], "fx", "block", "wrong_node"),  # the module path bound to its last node, block.mean
    # the node before the stage's last permute, a module inside the stage, bit for bit: no layout of the truth (controls in LAYOUTS)
    ("permuted_stages", ["stages", "stages.0"], "fx", "stages.0", "wrong_layer"),
    ("permuted_stages", ["stages", "stages.0"], "timm-fx", "stages.0", "wrong_layer"),
]


def _rows(name, layers, strategies, checks=("values",)):
    model = getattr(pitfalls, name)()
    return evaluate(model, layers=layers, strategies=strategies, checks=list(checks), input_shape=pitfalls.INPUT_SHAPE)


@pytest.mark.parametrize("name, layers, strategy, layer, diagnosis", REAL, ids=[f"{r[2]}-{r[0]}-{r[3]}" for r in REAL])
def test_a_real_strategys_failure_is_named_by_its_mechanism(name, layers, strategy, layer, diagnosis):
    row = _rows(name, layers, [strategy]).query("layer == @layer").iloc[0]
    assert (row.status, row.diagnosis) == ("fail", diagnosis), row.to_dict()


@pytest.mark.parametrize("name, layers", sorted({(r[0], tuple(r[1])) for r in REAL}))
def test_the_control_a_cloning_hook_is_right_on_every_planted_model(name, layers):
    rows = _rows(name, list(layers), ["hooks+clone"])
    assert (rows["status"] == "pass").all(), rows.to_dict("records")


def test_a_replaced_entry_of_a_kept_output_is_named_where_an_in_place_op_is_not():
    """hooks+clone clones a module's output only where it is one tensor: a dict it returns is kept
    as is, and the entry the model replaces later comes back in its new shape."""
    row = _rows("replaced_entry", ["head"], ["hooks+clone"]).iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "inplace_aliasing"), row.to_dict()
    assert "a later op replaced ['mask'] in the dict the module returned, which the strategy kept" in row.detail, row.detail
    # the controls: the entry's tensor changed in place, and a kept tensor changed in place, are no replaced part
    for name, layers, strategy, layer in (("inplace_entry", ["head"], "hooks+clone", "head"), ("inplace_after_tap", ["bn", "head"], "hooks", "bn")):
        row = _rows(name, layers, [strategy]).query("layer == @layer").iloc[0]
        assert (row.status, row.diagnosis) == ("fail", "inplace_aliasing"), row.to_dict()
        assert row.detail.endswith("equals the output after a later in-place op overwrote it"), row.detail


def test_ilg_keeps_an_in_place_op_inside_a_child_that_fx_drops():
    """The control for dead_code_eliminated: a strategy running the child whole is right."""
    rows = _rows("inplace_in_child", ["head"], ["ilg", "fx"]).set_index("strategy")
    assert rows.loc["ilg", "status"] == "pass" and rows.loc["fx", "diagnosis"] == "dead_code_eliminated"


def test_dead_code_names_every_call_fx_dropped_when_one_alone_does_not_give_the_value():
    row = _rows("wrapped_mutation", ["second", "head"], ["fx"]).query("layer == 'head'").iloc[0]
    assert "2 calls" in row.detail and "function op _accumulate" in row.detail, row.detail


def _module_first_output(ex, module, x, extraction):
    return Extraction({"second": module.first(x)}, extraction.output)


def _sigmoid_of_first(ex, module, x, extraction):
    return Extraction({"first": torch.sigmoid(module.first(x))}, extraction.output)


def _without_the_doubling(ex, module, x, extraction):
    """The value fx gives by dropping mul_, computed by a strategy that runs no graph."""
    return Extraction({"second": module.second(module.first(x))}, extraction.output)


# (planted fault, pitfall model, layers, layer, diagnosis): strategies with the fault planted
PLANTED = [
    (_module_first_output, "plain", ["second"], "second", "wrong_layer"),  # matches module 'first'
    (_sigmoid_of_first, "functional_between", ["first"], "first", "wrong_node"),  # matches node 'sigmoid'
    (_without_the_doubling, "dead_inplace", ["second"], "second", "children_not_chained"),  # no graph: not dead code
]


@pytest.mark.parametrize("corrupt, name, layers, layer, diagnosis", PLANTED, ids=[p[0].__name__ for p in PLANTED])
def test_a_planted_fault_is_named_by_its_mechanism(corrupt, name, layers, layer, diagnosis, register):
    register("planted", corrupted(corrupt))
    row = _rows(name, layers, ["planted"]).query("layer == @layer").iloc[0]
    assert (row.status, row.diagnosis) == ("fail", diagnosis), row.to_dict()



def _feature(layer, function):
    def corrupt(ex, module, x, extraction):
        return Extraction({layer: function(extraction.features[layer])}, extraction.output)

    return corrupt


def _tokens_as_map(order_for_image):
    """Tokens (N, 16, 6) laid out as a (N, 6, 4, 4) map, image i's tokens in ``order_for_image(i)``."""
    def layout(tokens):
        reordered = torch.stack([tokens[i, order_for_image(i)] for i in range(tokens.shape[0])])
        return reordered.transpose(1, 2).reshape(tokens.shape[0], 6, 4, 4)

    return layout


_SHUFFLE = [torch.randperm(16, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]

# (pitfall model, layer, what the planted strategy returns for it, diagnosis, words of its detail)
LAYOUTS = [
    ("channels_last", "block", lambda v: v.permute(0, 3, 1, 2), "reformatted", "(a channels-last map laid out channels-first)"),
    ("channels_last", "block", lambda v: v.permute(0, 3, 1, 2) + 0.5, "unexplained", ""),
    # the layout the model itself makes next (its permute after block): still the layout, not that later node
    ("channels_last", "block", lambda v: v.permute(0, 2, 3, 1), "reformatted", "permuted as (0, 2, 3, 1)"),
    ("tokens", "block", _tokens_as_map(lambda i: _SHUFFLE[0]), "reformatted", "another order (one permutation of the 16 tokens"),
    ("tokens", "block", _tokens_as_map(lambda i: _SHUFFLE[i]), "unexplained", ""),  # no one permutation for every image
    ("cross_tokens", "block", tuple, "container_changed", "in a tuple where the module returns a list"),
    ("cross_tokens", "block", lambda v: (v[0], v[1] + 0.5), "unexplained", ""),
    ("sized_patches", "patch_embed", lambda v: v[1], "partial_output", "element 1 (the Size (4, 4)) of the 2"),
    ("sized_patches", "patch_embed", lambda v: v[0] * 2, "unexplained", ""),
]


@pytest.mark.parametrize("name, layer, planted, diagnosis, words", LAYOUTS,
                         ids=[f"{r[0]}-{r[3]}-{i}" for i, r in enumerate(LAYOUTS)])
def test_the_true_values_in_another_layout_or_container_are_named_and_a_changed_value_is_not(name, layer, planted, diagnosis, words, register):
    register("planted", corrupted(_feature(layer, planted)))
    row = _rows(name, [layer], ["planted"]).iloc[0]
    assert (row.status, row.diagnosis) == ("fail", diagnosis), row.to_dict()
    assert words in row.detail


@pytest.mark.parametrize("name, layer", sorted({(r[0], r[1]) for r in LAYOUTS}))
def test_the_control_a_cloning_hook_is_right_on_the_layout_models(name, layer):
    assert (_rows(name, [layer], ["hooks+clone"])["status"] == "pass").all()


def test_a_feature_wrong_in_several_checks_is_diagnosed_once(register, monkeypatch):
    """A permuted map fails values, shape and (flattened) nothing else: both rows carry the one
    diagnosis, measured once (diagnosing it for each check, as before the memo, counts two)."""
    from conformance.judging import diagnoses

    calls = []
    monkeypatch.setattr(diagnoses, "MECHANISMS", tuple(
        (lambda ctx, layer, value, mechanism=mechanism: calls.append(mechanism.__name__) or mechanism(ctx, layer, value))
        for mechanism in diagnoses.MECHANISMS))
    register("planted", corrupted(_feature("block", lambda v: v.permute(0, 3, 1, 2))))
    rows = _rows("channels_last", ["block"], ["planted"], checks=("values", "shape"))
    assert rows.set_index("check").diagnosis.to_dict() == {"values": "reformatted", "shape": "reformatted"}, rows.to_dict("records")
    assert calls == ["reformatted", "permuted"], calls


def test_a_units_wrong_features_are_searched_for_in_one_pass_each_way(register, monkeypatch):
    """Two layers' values no mechanism explains: both are looked for among the modules' outputs
    in one pass and among the nodes' values in one more, with each layer's own answer (a pass
    per value, as before the search took the unit's wrong features along, counts two each)."""
    from conformance.running import runner

    passes = []
    for name in ("locate", "locate_nodes"):
        search = getattr(runner, name)
        monkeypatch.setattr(runner, name, lambda *args, search=search, name=name, **kwargs: passes.append(name) or search(*args, **kwargs))
    register("planted", corrupted(lambda ex, module, x, extraction: Extraction(
        {layer: value + 0.5 for layer, value in extraction.features.items()}, extraction.output)))
    rows = _rows("plain", ["first", "second"], ["planted"])
    assert (rows.diagnosis == "unexplained").all() and len(rows) == 2, rows.to_dict("records")
    assert sorted(passes) == ["locate", "locate_nodes"], passes


def test_one_search_gives_each_value_its_own_modules_and_nodes():
    from conformance.core.compare import is_close
    from conformance.truth.oracle import locate, locate_nodes

    model = pitfalls.plain().eval()
    x = torch.randn(pitfalls.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model.first(x)
        values = [model.second(first), first, first + 0.5]
    assert locate(model, x, values, close=is_close) == [["second"], ["first"], []]
    assert locate_nodes(model, x, values, close=is_close) == [["second"], ["first"], []]


class _BranchingScaled(nn.Module):
    """Scales by a keyword argument, after a branch on a value: no meta-device run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        y = self.conv(x)
        return y * scale if bool(y.abs().mean() < 1e6) else y


class _BranchingKeywordChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _BranchingScaled()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x, scale=2.0))


def _counterfactual_runs(monkeypatch):
    from conformance.running import runner

    runs = []
    counterfactual = runner.counterfactual
    monkeypatch.setattr(runner, "counterfactual", lambda *args, **kwargs: runs.append(kwargs.get("shapes_only", False)) or counterfactual(*args, **kwargs))
    return runs


def test_a_change_of_another_shape_on_the_meta_device_is_not_run_for_real(register, monkeypatch):
    """A value whose shape no keyword-dropping change gives is left unexplained after the meta
    runs alone (the real pass of every change, as before the meta run, fails it); where the
    shapes agree, the real pass names the change."""
    runs = _counterfactual_runs(monkeypatch)
    register("planted", corrupted(_feature("block", lambda v: v.flatten(1) + 1)))
    row = _rows("keyword_child", ["block", "head"], ["planted"]).query("layer == 'block'").iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "unexplained"), row.to_dict()
    assert runs == [True], runs
    runs.clear()
    row = _rows("keyword_child", ["block", "head"], ["ilg"]).query("layer == 'block'").iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "kwargs_dropped") and runs == [True, False], (row.to_dict(), runs)


def test_a_model_the_meta_device_cannot_run_gets_the_real_pass(monkeypatch):
    runs = _counterfactual_runs(monkeypatch)
    rows = evaluate(_BranchingKeywordChild(), layers=["block", "head"], strategies=["ilg"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    row = rows.query("layer == 'block'").iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "kwargs_dropped"), row.to_dict()
    assert runs == [True, False], runs


def test_the_modules_called_with_keywords_are_noted_by_the_truths_own_pass(monkeypatch):
    """``kwargs_dropped`` tries the modules the truth's pass saw called with keyword arguments, in
    the order they ran; no pass of the model runs for that list (a pass of its own, as before,
    fails it: the model's forward counts six calls)."""
    from conformance.truth.oracle import capture

    calls = []
    monkeypatch.setattr(_BranchingKeywordChild, "forward", lambda self, x: calls.append(1) or self.head(self.block(x, scale=2.0)))
    model = _BranchingKeywordChild().eval()
    x = torch.randn(pitfalls.INPUT_SHAPE)
    assert capture(model, x, layers=["head"]).keyword_calls == ["block"]
    assert capture(pitfalls.KeywordChild().eval(), x, layers=[]).keyword_calls == ["block"]
    assert capture(pitfalls.plain().eval(), x, layers=[]).keyword_calls == []
    calls.clear()
    rows = evaluate(model, layers=["block", "head"], strategies=["ilg"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    assert rows.query("layer == 'block'").iloc[0].diagnosis == "kwargs_dropped"
    # the first pass before any copy (zoo.materialise), the truth for the previous input and the
    # input and the input again (capture_twice), the pass on the meta device that finds whether the
    # model draws random numbers, the model called with ILG attached (ILG's own calls run the
    # children), the counterfactual on the meta device (which stops at the branch) and for real;
    # ILG leaves the model as it was, so no model-changes pass
    assert len(calls) == 1 + 3 + 1 + 1 + 2, len(calls)


class _DefaultKeyword(nn.Module):
    """``pitfalls.KeywordChild`` with its child called with the keyword's own default."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.block, self.head, self.scale = pitfalls.Scaled(), nn.Conv2d(4, 2, 1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x, scale=self.scale))


def test_a_keyword_given_its_own_default_is_no_keyword_to_drop():
    """Dropping ``scale=1.0`` runs the model as it ran: no counterfactual pass is spent on it.
    Control: ``scale=2.0`` is a keyword call, and ILG, which drops it, is named by it."""
    from conformance.truth.oracle import capture

    x = torch.randn(1, 3, 8, 8)
    assert capture(_DefaultKeyword(1.0).eval(), x, layers=["block"]).keyword_calls == []
    assert capture(_DefaultKeyword(2.0).eval(), x, layers=["block"]).keyword_calls == ["block"]
    rows = evaluate(_DefaultKeyword(2.0).eval(), layers=["block", "head"], strategies=["ilg"], checks=["values"], input_shape=(1, 3, 8, 8))
    assert rows.set_index("layer").loc["head", "diagnosis"] == "kwargs_dropped"
