"""Every kind of forward pass gets the right verdict: noise, nondeterminism, lazy modules,
structured outputs, forwards run without ``__call__``, and two mechanisms at once.

Each test has its negative control: the planted mechanism without the suite's handling of it
(or a model where the mechanism is absent) gives the other verdict."""

import copy

import pytest
import torch
from torch import nn

import pitfalls
from conformance.core import rng
from conformance.running.runner import evaluate

RIGHT = ["stash", "stash+clone", "hooks", "hooks+clone", "torchextractor", "torchextractor+clone", "fx"]


def verdicts(model, layers, strategies=RIGHT, checks=("values",)):
    rows = evaluate(model, layers=layers, strategies=strategies, checks=list(checks), input_shape=pitfalls.INPUT_SHAPE)
    return {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


def test_noise_drawn_in_eval_mode_is_the_same_noise_for_the_truth_and_every_strategy():
    got = verdicts(pitfalls.NoiseInEval(), ["encode", "decode", "head"], checks=("values", "repeatable", "set_independence"))
    for key, (status, diagnosis, detail) in got.items():
        assert status in ("pass", "skipped"), (key, diagnosis, detail)
    assert all(got[(s, "values", "decode")][0] == "pass" for s in RIGHT)


def test_negative_control_strategy_passes_not_pinned_to_the_truths_random_state_fail(monkeypatch):
    monkeypatch.setattr(rng.PinnedExtractor, "__call__", lambda self, x: self._extractor(x))
    got = verdicts(pitfalls.NoiseInEval(), ["decode"], strategies=["hooks+clone"])
    assert got[("hooks+clone", "values", "decode")][0] == "fail"


def test_a_model_nondeterministic_from_the_same_state_is_its_own_verdict_for_every_strategy():
    strategies = [*RIGHT, "ilg"]
    got = verdicts(pitfalls.OwnGenerator(), ["encode", "decode"], strategies=strategies,
                   checks=("values", "repeatable", "model_output", "model_untouched", "set_independence"))
    for strategy in strategies:
        assert got[(strategy, "values", "decode")][:2] == ("skipped", "nondeterministic_model"), strategy
        assert got[(strategy, "repeatable", "decode")][:2] == ("skipped", "nondeterministic_model"), strategy
        assert got[(strategy, "set_independence", "decode")][:2] == ("skipped", "nondeterministic_model"), strategy
        assert got[(strategy, "model_output", "*")][:2] == ("skipped", "nondeterministic_model"), strategy
        assert got[(strategy, "values", "encode")][0] == "pass", strategy
    assert "another value" in got[("hooks", "values", "decode")][2]
    for strategy in strategies:  # the model's own noise is not blamed on a strategy that leaves it as it was
        if strategy not in ("fx", "torchextractor", "torchextractor+clone"):
            assert got[(strategy, "model_untouched", "*")][0] == "pass", (strategy, got[(strategy, "model_untouched", "*")])


def test_negative_control_a_model_with_noise_from_the_global_state_is_not_nondeterministic():
    for model in (pitfalls.NoiseInEval(), pitfalls.Plain(), pitfalls.DropoutBetween()):
        got = verdicts(model, [name for name, _ in model.named_children()][:2], strategies=["hooks+clone"])
        assert not any(diagnosis == "nondeterministic_model" for _, diagnosis, _ in got.values()), model


def test_lazy_modules_are_materialised_once_before_any_copy():
    model = pitfalls.Lazy()
    with pytest.raises(ValueError, match="uninitialized parameter"):  # the control: a lazy model cannot be copied
        copy.deepcopy(model)
    got = verdicts(model, ["conv", "bn", "fc"], checks=("values", "model_untouched", "repeatable"))
    for key, (status, diagnosis, detail) in got.items():
        if key[0] in ("torchextractor", "torchextractor+clone", "fx") and key[1] == "model_untouched":
            continue  # attributes or counters these strategies leave behind, as on any model
        assert status == "pass", (key, diagnosis, detail)
    assert "lazy modules materialised by one pass before copying: conv, bn, fc" in got[("hooks", "values", "conv")][2]
    assert got[("hooks", "values", "conv")][2] == got[("fx", "values", "fc")][2]


def test_state_a_model_sets_on_its_first_call_is_set_once_before_any_copy(monkeypatch):
    layers = ["conv", "norm", "head"]
    got = verdicts(pitfalls.FirstCallInit(), layers, checks=("values", "repeatable"))
    for key, (status, diagnosis, detail) in got.items():
        assert status == "pass", (key, diagnosis, detail)
        assert "state set by the model's first call, made by one pass before copying: norm, norm.shift, norm.scale" in detail
    from conformance.running import runner

    monkeypatch.setattr(runner, "materialise", lambda model, x: "")  # the control: every copy initialised by its own first input
    got = verdicts(pitfalls.FirstCallInit(), layers, checks=("values", "repeatable"))
    assert any(status == "fail" for status, _, _ in got.values())


def test_a_model_without_first_call_state_says_nothing_of_materialising():
    got = verdicts(pitfalls.Plain(), ["first", "second"], strategies=["hooks"])
    assert not any("materialised" in detail for _, _, detail in got.values())


def test_children_returning_tuples_are_stashed_as_the_tuple():
    got = verdicts(pitfalls.Attention(), ["embed", "attn", "head"], checks=("values", "shape", "kwargs_and_tuples"))
    for strategy in RIGHT:
        for check in ("values", "shape", "kwargs_and_tuples"):
            assert got[(strategy, check, "attn")][0] == "pass", (strategy, check, got[(strategy, check, "attn")])


def test_dataclass_named_tuple_and_none_members_flow_through_every_strategy():
    from conformance.judging.causes import GENERIC_ERRORS

    strategies = [*RIGHT, "ilg", "captum", "nnsight", "torchlens"]
    layers = ["first", "second", "third", "head"]
    got = verdicts(pitfalls.StructuredOutputs(), layers, strategies=strategies, checks=("values", "shape", "kwargs_and_tuples"))
    for (strategy, check, layer), (status, diagnosis, detail) in got.items():
        assert not (status == "error" and diagnosis in GENERIC_ERRORS), (strategy, check, layer, detail)  # every error has its cause
        assert not (status == "fail" and diagnosis == "unexplained"), (strategy, check, layer, detail)
        if strategy in ("stash", "stash+clone", "hooks", "hooks+clone", "torchextractor", "torchextractor+clone", "nnsight"):
            assert status in ("pass", "skipped"), (strategy, check, layer, detail)
    assert got[("fx", "values", "first")][:2] == ("fail", "wrong_node")  # the dataclass's last node, its mean
    assert got[("captum", "values", "second")][:2] == ("fail", "container_changed")  # Captum gives the named tuple's fields as a tuple
    if ("torchlens", "values", "second") in got and got[("torchlens", "values", "second")][0] != "skipped":
        assert got[("torchlens", "values", "second")][:2] == ("error", "multiple_outputs")  # .out refuses a module with two outputs


def test_negative_control_a_stash_of_tensors_only_misses_the_tuple(monkeypatch):
    from strategies import stash

    monkeypatch.setattr(stash, "map_tensors", lambda function, value: function(value) if isinstance(value, torch.Tensor) else None)
    got = verdicts(pitfalls.Attention(), ["attn"], strategies=["stash"])
    assert got[("stash", "values", "attn")][0] == "fail"


def test_a_forward_run_without_call_is_judged_and_hooks_are_told_why_they_miss_it():
    got = verdicts(pitfalls.ForwardCalled(), ["first", "block", "block.0", "head"], strategies=[*RIGHT, "ilg"])
    for strategy in ("stash", "stash+clone", "ilg", "fx"):
        assert got[(strategy, "values", "block")][0] == "pass", (strategy, got[(strategy, "values", "block")])
    for strategy in ("hooks", "hooks+clone", "torchextractor", "torchextractor+clone"):
        status, diagnosis, detail = got[(strategy, "values", "block")]
        assert (status, diagnosis) == ("fail", "call_bypassed"), strategy
        assert ".forward()" in detail
        assert got[(strategy, "values", "block.0")][0] == "pass"  # called through __call__ inside the bypassed forward
    assert not any("does not run" in detail for _, _, detail in got.values())


def test_negative_control_a_module_that_never_runs_is_still_not_called():
    got = verdicts(pitfalls.NeverCalled(), ["blocks", "head"], strategies=["hooks", "stash"])
    assert got[("hooks", "values", "blocks")][:2] == ("skipped", "not_called")
    assert got[("stash", "values", "blocks")][:2] == ("skipped", "not_called")


def test_ilg_chain_overwritten_by_an_inplace_child_is_named_by_both_mechanisms():
    got = verdicts(pitfalls.ChainInplace(), ["conv", "head"], strategies=["ilg"])
    status, diagnosis, detail = got[("ilg", "values", "conv")]
    assert (status, diagnosis) == ("fail", "children_not_chained+inplace_aliasing")
    assert "in-place child" in detail
    # the control: with nothing in place after it, the replay alone reproduces the value
    assert got_replay_only()[:2] == ("fail", "children_not_chained")


def got_replay_only():
    return verdicts(pitfalls.FunctionalBetween(), ["first", "second"], strategies=["ilg"])[("ilg", "values", "second")]


def test_fx_dead_inplace_then_an_inplace_module_is_named_by_both_mechanisms():
    got = verdicts(pitfalls.DeadThenInplace(), ["first", "head"], strategies=["fx", "ilg", "hooks"])
    assert got[("fx", "values", "first")][:2] == ("fail", "dead_code_eliminated+inplace_aliasing")
    assert got[("ilg", "values", "first")][:2] == ("fail", "children_not_chained+inplace_aliasing")
    assert got[("hooks", "values", "first")][:2] == ("fail", "inplace_aliasing")
    # the control: a dead in-place op alone is one mechanism
    alone = verdicts(pitfalls.DeadInplace(), ["first", "second"], strategies=["fx"])
    assert alone[("fx", "values", "second")][:2] == ("fail", "dead_code_eliminated")


def test_fx_binding_a_tuple_returning_module_to_its_last_node_is_wrong_node():
    got = verdicts(pitfalls.TupleBlock(), ["block", "head"], strategies=["fx", "stash", "hooks"])
    status, diagnosis, detail = got[("fx", "values", "block")]
    assert (status, diagnosis) == ("fail", "wrong_node") and "'block.mean'" in detail
    assert got[("stash", "values", "block")][0] == got[("hooks", "values", "block")][0] == "pass"


class Aliased(nn.Module):
    """``second`` is ``first`` registered under a second name, called last."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 3, 3, padding=1)
        self.second = self.first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def test_a_module_registered_twice_is_requested_by_either_name():
    got = verdicts(Aliased(), ["first", "second"], strategies=["hooks", "stash", "torchextractor", "fx"])
    for strategy in ("hooks", "stash"):
        assert got[(strategy, "values", "second")][0] == got[(strategy, "values", "first")][0] == "pass", strategy
    status, diagnosis, detail = got[("torchextractor", "values", "second")]
    assert (status, diagnosis) == ("fail", "registered_twice") and "(first, second)" in detail
    assert got[("torchextractor", "values", "first")][0] == "pass"  # the control: the name it knows


def test_a_name_returned_once_for_two_requested_layers_is_shared_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True)))
    got = verdicts(model, ["1", "1.1"], strategies=["fx", "hooks+clone"])
    statuses = {layer: got[("fx", "values", layer)][:2] for layer in ("1", "1.1")}
    assert sorted(statuses.values()) == [("fail", "shared_output"), ("pass", "")], statuses
    assert got[("hooks+clone", "values", "1.1")][0] == "pass"  # the control: both names returned


def test_a_wrong_gradient_whose_value_is_another_nodes_is_wrong_node():
    """The gradients check's diagnosis looks for the feature's value among the nodes of the pass
    (``behaviour.autograd._gradient_diagnosis``); control: the true value is only a wrong gradient."""
    from types import SimpleNamespace

    from conformance.judging.behaviour.autograd import _gradient_diagnosis
    from conformance.truth.oracle import capture

    model = pitfalls.InplaceAfterTap().eval()
    x = torch.randn(pitfalls.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    truth = capture(model, x, layers=["bn", "relu"])
    probe = SimpleNamespace(model=model, input=x, tracer_kwargs={}, truth=truth)
    diagnosis, detail = _gradient_diagnosis(probe, "bn", "the gradients differ", value=truth.layers["relu"].value)
    assert diagnosis == "wrong_node" and "'relu'" in detail
    assert _gradient_diagnosis(probe, "bn", "the gradients differ", value=truth.layers["bn"].value)[0] == "wrong_gradient"
