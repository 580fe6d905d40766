"""Every cause of an error row is named by its planted fault, and only there (``conformance/judging/causes.py``)."""

from __future__ import annotations

import pytest
import torch

import pitfalls
from conformance.judging.causes import traced_optional_input
from conformance.running.runner import evaluate
from faults import corrupted
from strategies import Extraction


def _rows(name, layers, strategies, checks=("values", "keys")):
    return evaluate(getattr(pitfalls, name)(), layers=layers, strategies=strategies, checks=list(checks), input_shape=pitfalls.INPUT_SHAPE)


def _requires_every_layer(ex, module, x, extraction):
    """Captum's and nnsight's behaviour: a requested module that never ran fails the call."""
    missing = [layer for layer in ex.requested if layer not in extraction.features]
    if missing:
        raise KeyError(f"no output for {missing}")
    return extraction


def _always_raises(ex, module, x, extraction):
    raise RuntimeError("planted: every call fails")


def _strategy(corrupt):
    base = corrupted(corrupt)

    class Requiring(base):
        def attach(self, model, *, layers, tracer_kwargs=None):
            extractor = super().attach(model, layers=layers, tracer_kwargs=tracer_kwargs)
            extractor.requested = [str(layer) for layer in layers]
            return extractor

    return Requiring


def _register_counting(register) -> list[list[str]]:
    """Register ``requires_every_layer`` noting each request it gets; the list of requests."""
    requests = []

    class Counting(_strategy(_requires_every_layer)):
        def attach(self, model, *, layers, tracer_kwargs=None):
            requests.append([str(layer) for layer in layers])
            return super().attach(model, layers=layers, tracer_kwargs=tracer_kwargs)

    register("requires_every_layer", Counting)
    return requests


def test_a_module_that_never_runs_is_the_cause_of_the_failures_it_brings(register):
    register("requires_every_layer", _strategy(_requires_every_layer))
    rows = _rows("never_called", ["blocks", "head"], ["requires_every_layer"]).set_index(["layer", "check"])
    assert tuple(rows.loc[("blocks", "values"), ["status", "diagnosis"]]) == ("error", "not_called")
    assert tuple(rows.loc[("*", "keys"), ["status", "diagnosis"]]) == ("error", "not_called")
    assert "fails as a whole because blocks does not run" in rows.loc[("*", "keys"), "detail"]
    assert rows.loc[("head", "values"), "status"] == "pass"


def test_a_request_failing_for_modules_that_never_run_is_retried_without_them_then_those_alone(register):
    requests = _register_counting(register)
    rows = _rows("never_called", ["blocks", "blocks.0", "blocks.1", "head"], ["requires_every_layer"]).set_index(["layer", "check"])
    # the whole request in run order first (the module that never runs goes last), then without it, then it alone
    assert requests == [["blocks", "blocks.0", "blocks.1", "head"], ["blocks.0", "blocks.1", "head", "blocks"], ["blocks.0", "blocks.1", "head"], ["blocks"]]
    assert tuple(rows.loc[("blocks", "values"), ["status", "diagnosis"]]) == ("error", "not_called")
    assert tuple(rows.loc[("*", "keys"), ["status", "diagnosis"]]) == ("error", "not_called")
    for layer in ("blocks.0", "blocks.1", "head"):
        assert rows.loc[(layer, "values"), "status"] == "pass"
        assert rows.loc[(layer, "values"), "detail"].startswith("requested without the 1 layers that do not run or return more than tensors, as the whole request failed")


def test_the_control_a_strategy_failing_everything_is_not_explained_by_the_module_that_never_runs(register):
    register("always_raises", _strategy(_always_raises))
    rows = _rows("never_called", ["blocks", "head"], ["always_raises"]).set_index(["layer", "check"])
    assert rows.loc[("head", "values"), "diagnosis"] == "call_failed"
    assert rows.loc[("*", "keys"), "diagnosis"] == "call_failed"
    assert rows.loc[("blocks", "values"), "diagnosis"] == "call_failed"  # it fails everywhere: the module is no cause


def test_replaying_the_children_reproduces_ilgs_crash():
    rows = _rows("flatten_between", ["features", "fc"], ["ilg"]).set_index(["layer", "check"])
    assert tuple(rows.loc[("fc", "values"), ["status", "diagnosis"]]) == ("error", "children_not_chained")
    assert "mat1 and mat2 shapes cannot be multiplied" in rows.loc[("fc", "values"), "detail"]
    assert "the model is no plain chain of its children" in rows.loc[("fc", "values"), "detail"]
    assert rows.loc[("features", "values"), "status"] == "pass"


def test_the_control_another_crash_on_a_model_that_is_no_chain_is_not_the_replay(register):
    register("always_raises", _strategy(_always_raises))
    rows = _rows("flatten_between", ["fc"], ["always_raises"]).set_index(["layer", "check"])
    assert rows.loc[("fc", "values"), "diagnosis"] == "call_failed"
    assert "plain chain" not in rows.loc[("fc", "values"), "detail"]  # the replay is no cause of another strategy's error


def test_an_fx_trace_error_names_the_line_of_the_model():
    rows = _rows("data_dependent_control_flow", ["first", "second"], ["fx"]).set_index(["layer", "check"])
    row = rows.loc[("second", "values")]
    assert (row.status, row.diagnosis) == ("error", "untraceable")
    assert "TraceError" in row.detail and "pitfalls.py:" in row.detail and "if x.sum() > 0" in row.detail
    assert _rows("plain", ["first", "second"], ["fx"])["status"].eq("pass").all()  # the control: a traceable model


def _first_branch_as_map(ex, module, x, extraction):
    small = extraction.features["block"][0]
    return Extraction({"block": small[:, 1:].transpose(1, 2).reshape(small.shape[0], 8, 4, 4)}, extraction.output)


def _first_branch_as_map_shifted(ex, module, x, extraction):
    shifted = _first_branch_as_map(ex, module, x, extraction)
    return Extraction({"block": shifted.features["block"] + 0.5}, extraction.output)


@pytest.mark.parametrize("corrupt, diagnosis", [(_first_branch_as_map, "reformatted"), (_first_branch_as_map_shifted, "unexplained")])
def test_one_branch_of_a_list_of_token_sequences_as_a_map_is_reformatted(corrupt, diagnosis, register):
    register("planted", corrupted(corrupt))
    row = _rows("cross_tokens", ["block"], ["planted"], checks=("values",)).iloc[0]
    assert (row.status, row.diagnosis) == ("fail", diagnosis), row.to_dict()
    if diagnosis == "reformatted":
        assert "element 0 of the 2 token sequences" in row.detail


def test_a_proxy_error_inside_the_trace_is_untraceable_and_names_the_line():
    row = _rows("len_of_input", ["first", "second"], ["fx"]).set_index(["layer", "check"]).loc[("second", "values")]
    assert (row.status, row.diagnosis) == ("error", "untraceable")
    assert "'len' is not supported in symbolic tracing" in row.detail and "len(x)" in row.detail


def test_a_module_returning_a_size_is_the_cause_of_captums_failure():
    rows = _rows("sized_patches", ["patch_embed", "head"], ["captum"]).set_index(["layer", "check"])
    assert tuple(rows.loc[("patch_embed", "values"), ["status", "diagnosis"]]) == ("error", "non_tensor_output")
    assert "(it holds torch.Size)" in rows.loc[("patch_embed", "values"), "detail"]
    assert tuple(rows.loc[("*", "keys"), ["status", "diagnosis"]]) == ("error", "non_tensor_output")
    assert rows.loc[("head", "values"), "status"] == "pass"
    assert rows.loc[("head", "values"), "detail"].startswith("requested without the 1 layers that do not run or return more than tensors")


def test_the_control_a_strategy_failing_everything_is_not_explained_by_the_size(register):
    register("always_raises", _strategy(_always_raises))
    rows = _rows("sized_patches", ["patch_embed", "head"], ["always_raises"]).set_index(["layer", "check"])
    assert rows.loc[("patch_embed", "values"), "diagnosis"] == "call_failed"
    assert rows.loc[("*", "keys"), "diagnosis"] == "call_failed"


def test_a_graph_traced_with_an_optional_mask_as_input_fails_for_the_mask():
    rows = _rows("optional_mask", ["first", "second"], ["fx"]).set_index(["layer", "check"])
    row = rows.loc[("second", "values")]
    assert (row.status, row.diagnosis) == ("error", "traced_optional_input")
    assert "'mask', None by default" in row.detail and "NoneType" in row.detail


def test_the_control_a_graph_failing_on_another_input_is_not_the_optional_argument():
    def fails_on_x(x, mask=None):
        return x.view(-1, 7) if mask is None else x

    graph = torch.fx.symbolic_trace(fails_on_x, concrete_args={"mask": None})
    graph.graph.placeholder("extra", default_value=None)  # an optional input the failing node does not take
    graph.recompile()
    try:
        graph(torch.zeros(2, 3))
    except RuntimeError as exc:
        assert traced_optional_input(exc=exc, module=graph, x=torch.zeros(2, 3)) is None
    else:
        raise AssertionError("the planted graph should raise")


def test_a_request_out_of_the_order_the_modules_run_fails_in_nnsight_and_works_in_order():
    rows = _rows("reordered_children", ["second", "first"], ["nnsight"]).set_index(["layer", "check"])
    row = rows.loc[("*", "keys")]
    assert (row.status, row.diagnosis) == ("error", "request_order"), row.detail
    assert "(first, second)" in row.detail and "OutOfOrderError" in row.detail
    assert (rows.loc[[("first", "values"), ("second", "values")], "status"] == "pass").all()
    assert rows.loc[("first", "values"), "detail"].startswith("requested in the order the model runs them, as the whole request failed")


def test_the_control_requested_in_the_order_they_run_nnsight_passes_and_a_failure_everywhere_is_no_order(register):
    assert _rows("reordered_children", ["first", "second"], ["nnsight"])["status"].eq("pass").all()
    register("always_raises", _strategy(_always_raises))
    rows = _rows("reordered_children", ["second", "first"], ["always_raises"]).set_index(["layer", "check"])
    assert rows.loc[("*", "keys"), "diagnosis"] == "call_failed"


def test_a_request_failing_for_a_module_that_never_runs_and_for_its_order_names_both(register):
    """nnsight on a request that is both out of run order and holds a module that never runs:
    neither the whole request in run order nor the rest as given works; the rest in run order does."""
    requests = _register_counting(register)
    rows = _rows("reordered_with_unused", ["second", "first", "unused", "head"], ["nnsight"]).set_index(["layer", "check"])
    row = rows.loc[("*", "keys")]
    assert (row.status, row.diagnosis) == ("error", "not_called"), row.detail
    assert "because unused does not run" in row.detail and "requested in the order the model runs them; requested as given they fail too" in row.detail
    assert "OutOfOrderError" in row.detail
    for layer in ("first", "second", "head"):
        assert rows.loc[(layer, "values"), "status"] == "pass"
        assert rows.loc[(layer, "values"), "detail"].startswith(
            "requested without the 1 layers that do not run or return more than tensors and in the order the model runs them")
    assert tuple(rows.loc[("unused", "values"), ["status", "diagnosis"]]) == ("error", "not_called")
    # the control: a strategy that fails only on the module that never runs works on the rest as given
    _rows("reordered_with_unused", ["second", "first", "unused", "head"], ["requires_every_layer"])
    assert requests == [["second", "first", "unused", "head"], ["first", "second", "head", "unused"], ["second", "first", "head"], ["unused"]]


def test_a_strategy_failing_on_every_layer_is_explained_where_its_error_names_a_part_of_the_output():
    row = _rows("sized_patches", ["patch_embed"], ["captum"]).set_index(["layer", "check"]).loc[("patch_embed", "values")]
    assert (row.status, row.diagnosis) == ("error", "non_tensor_output")
    assert "the error names its torch.Size" in row.detail


class OnlyAContainer(torch.nn.Module):
    """One child, a ModuleList whose blocks the model calls one by one (Segformer's ``stages``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class MaskedEmbeddings(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.conv(x) if mask is None else self.conv(x) * mask


class SecondArgument(torch.nn.Module):
    """The model calls its first child with a second positional argument (VideoMAE's
    ``embeddings(pixel_values, bool_masked_pos)``); ``passes_it=False``: the control, a plain chain."""

    def __init__(self, *, passes_it: bool = True) -> None:
        super().__init__()
        self.embeddings = MaskedEmbeddings() if passes_it else torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 4, 1)
        self.passes_it = passes_it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embeddings(x, None) if self.passes_it else self.embeddings(x))


def _ilg(model, layers):
    rows = evaluate(model, layers=layers, strategies=["ilg"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE).fillna("")
    return {row.layer: (row.status, row.diagnosis, row.detail) for row in rows.itertuples()}


def test_a_child_the_model_never_calls_is_where_the_replay_parts_from_the_model():
    status, diagnosis, detail = _ilg(OnlyAContainer(), ["stages"])["stages"]
    assert (status, diagnosis) == ("error", "children_not_chained") and "the model does not call its child 'stages'" in detail, detail


def test_a_child_called_with_more_arguments_than_a_replay_passes_is_where_they_part():
    got = _ilg(SecondArgument(), ["embeddings", "head"])
    status, diagnosis, detail = got["embeddings"]
    assert (status, diagnosis) == ("error", "children_not_chained"), got
    assert "the model calls 'embeddings' with 2 positional arguments, a replay with 1" in detail, detail
    # control: the same chain called with one argument replays as the model runs it
    assert {status for status, _, _ in _ilg(SecondArgument(passes_it=False), ["embeddings", "head"]).values()} == {"pass"}

