"""Each behaviour check: a planted fault it must catch, and a clean case it must pass."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import pitfalls
from conformance.judging.behaviour import REDUCED_INPUT_CHECKS
from conformance.running.runner import evaluate
from faults import corrupted, features_mapped, unchanged
from strategies import Extraction, Extractor, Strategy, get_strategy


def rows_for(model, *, strategies, checks, layers=("first", "second"), input_shape=pitfalls.INPUT_SHAPE):
    rows = evaluate(model, layers=list(layers), strategies=strategies, checks=checks, input_shape=input_shape)
    return {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


def statuses(got, strategy, check):
    return {key[2]: value[:2] for key, value in got.items() if key[:2] == (strategy, check)}


# -- planted faults -------------------------------------------------------------------------


def _ignores_train_mode(ex, module, x, extraction):
    if not module.training:
        return extraction
    module.eval()
    try:
        return ex.inner.extract_with(module, x)
    finally:
        module.train()


_doubled_gradient = features_mapped(lambda v: v.detach() + 2 * (v - v.detach()))
_squeezed = features_mapped(lambda v: v.squeeze())  # drops the batch dimension at batch size 1


def _first_size_only(ex, module, x, extraction):
    ex.__dict__.setdefault("first_size", x.shape[2:])
    return Extraction({k: F.interpolate(v, size=tuple(ex.first_size)) for k, v in extraction.features.items()}, extraction.output)


def _holds_a_lock(ex, module, x, extraction):
    ex.lock = threading.Lock()
    return extraction


def _cache_weight_outside_state_dict(model):
    model.cached_weight = model.first.weight.detach().clone()  # a plain attribute: not in the state dict


def _uses_cached_weight(ex, module, x, extraction):
    drift = (module.cached_weight - module.first.weight).abs().sum()  # hooks' module is the model
    return Extraction({k: v + drift for k, v in extraction.features.items()}, extraction.output)


def _wrong_when_swapped(ex, module, x, extraction):
    """Right on its own module, wrong on any stand-in (scripted, compiled, exported)."""
    if module is ex.module:
        return extraction
    return Extraction({k: v + 1.0 for k, v in extraction.features.items()}, extraction.output)


_cast_to_float32 = features_mapped(lambda v: v.float())  # a no-op, except under autocast
# reads a channels_last feature's memory as if it were contiguous NCHW
_assumes_contiguous = features_mapped(lambda v: v.as_strided(v.shape, torch.empty(v.shape).stride()) if v.dim() == 4 else v)


def _counts_calls_in_place(ex, module, x, extraction):
    """Keeps a call counter updated in place: made under inference_mode, it cannot be updated after."""
    ex.__dict__.setdefault("call_count", torch.zeros(()))
    ex.call_count.add_(1)
    return extraction


PLANTED = {
    # name: (corrupt, on_attach, inner, model, layers, check, layer, diagnosis)
    "ignores_train_mode": (_ignores_train_mode, None, "hooks+clone", pitfalls.InplaceAfterTap, ["bn", "head"], "train_mode", "bn", "unexplained"),
    "doubled_gradient": (_doubled_gradient, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "gradients", "first", "wrong_gradient"),
    "first_size_only": (_first_size_only, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "input_size", "first", "shape_mismatch"),
    "squeezed": (_squeezed, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "batch_consistency", "first", "shape_mismatch"),
    "holds_a_lock": (_holds_a_lock, None, "ilg", pitfalls.Plain, ["first", "second"], "deepcopy", "*", "deepcopy_failed"),
    "weight_outside_state_dict": (_uses_cached_weight, _cache_weight_outside_state_dict, "hooks+clone", pitfalls.Plain, ["first", "second"], "state_dict", "*", "unexplained"),
    "wrong_when_scripted": (_wrong_when_swapped, None, "ilg", pitfalls.Plain, ["first", "second"], "jit_script", "*", "unexplained"),
    "wrong_when_exported": (_wrong_when_swapped, None, "ilg", pitfalls.Plain, ["first", "second"], "export", "*", "unexplained"),
    "cast_to_float32": (_cast_to_float32, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "autocast", "first", "cast"),
    "assumes_contiguous": (_assumes_contiguous, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "channels_last", "first", "unexplained"),
    "counts_calls_in_place": (_counts_calls_in_place, None, "hooks+clone", pitfalls.Plain, ["first", "second"], "inference_mode", "first", "call_failed"),
}


def _caught(fault, register, input_shape=pitfalls.INPUT_SHAPE):
    corrupt, on_attach, inner, model, layers, check, layer, diagnosis = PLANTED[fault]
    register(f"planted-{fault}", corrupted(corrupt, on_attach=on_attach, inner=inner))
    register(f"control-{fault}", corrupted(unchanged, inner=inner))
    got = rows_for(model(), strategies=[f"planted-{fault}", f"control-{fault}"], checks=[check], layers=layers, input_shape=input_shape)
    assert got[(f"planted-{fault}", check, layer)][:2] == ("fail", diagnosis), got
    control = statuses(got, f"control-{fault}", check)
    assert set(control.values()) == {("pass", "")}, control


@pytest.mark.parametrize("fault", PLANTED)
def test_planted_fault_is_caught(fault, register):
    _caught(fault, register)


@pytest.mark.parametrize("fault", [fault for fault, planted in PLANTED.items() if planted[5] in REDUCED_INPUT_CHECKS])
def test_planted_fault_is_caught_on_the_input_halved(fault, register):
    """The checks on the reduced input, where it is the first example at half size (64 -> 32)."""
    _caught(fault, register, input_shape=(2, 3, 64, 64))


def test_the_compile_check_catches_a_fault_and_passes_the_control(register):
    register("planted-compiled", corrupted(_wrong_when_swapped, inner="fx"))
    got = rows_for(pitfalls.Plain(), strategies=["planted-compiled", "fx"], checks=["compile"])
    assert got[("planted-compiled", "compile", "*")][:2] == ("fail", "unexplained")
    status, _, detail = got[("fx", "compile", "*")]
    assert status == "pass" and "hook added after the first compiled call" in detail


class _DrawsBeforeForward(Strategy):
    """``hooks+clone`` drawing from the global RNG before each pass (as a sampling tracer
    would); ``noisy`` also adds a random offset, which no RNG state explains."""

    noisy = False

    def attach(self, model, *, layers, tracer_kwargs=None):
        inner, noisy = get_strategy("hooks+clone").attach(model, layers=layers), self.noisy

        class Drawing(Extractor):
            module = inner.module

            def extract_with(self, module, x):
                offset = torch.rand(1).item()
                extraction = inner.extract_with(module, x)
                if noisy and module.training:
                    return Extraction({k: v + offset for k, v in extraction.features.items()}, extraction.output)
                return extraction

            def close(self):
                inner.close()

        return Drawing()


class _DrawsAndAddsNoise(_DrawsBeforeForward):
    noisy = True


def test_a_strategy_that_draws_from_the_rng_is_named_rng_shifted_in_train_mode(register):
    register("planted-draws", _DrawsBeforeForward)
    register("planted-noise", _DrawsAndAddsNoise)
    got = rows_for(pitfalls.DropoutBetween(), strategies=["planted-draws", "planted-noise", "hooks+clone"], checks=["train_mode"])
    assert got[("planted-draws", "train_mode", "first")][:2] == ("pass", "")  # before the dropout: no random op yet
    status, diagnosis, detail = got[("planted-draws", "train_mode", "second")]
    assert (status, diagnosis) == ("fail", "rng_shifted") and "draws from the global RNG" in detail, detail
    assert got[("planted-noise", "train_mode", "second")][:2] == ("fail", "unexplained")  # the negative control
    assert set(statuses(got, "hooks+clone", "train_mode").values()) == {("pass", "")}


class _DrawsAndShifts(_DrawsBeforeForward):
    """Draws, and adds a random offset in every mode: no RNG state explains its values."""

    def attach(self, model, *, layers, tracer_kwargs=None):
        drawing = super().attach(model, layers=layers, tracer_kwargs=tracer_kwargs)
        inner = drawing.extract_with

        class Shifting(Extractor):
            module = drawing.module

            def extract_with(self, module, x):
                extraction = inner(module, x)
                return Extraction({k: v + torch.rand(1).item() for k, v in extraction.features.items()}, extraction.output)

            def close(self):
                drawing.close()

        return Shifting()


def test_a_strategy_that_draws_from_the_rng_is_named_rng_shifted_in_eval_mode_where_the_model_draws(register):
    """A model that samples in eval mode (a VAE, ViT-MAE's masking): the layer after the noise is
    the model's value when each module call starts from the state the strategy's pass had."""
    register("planted-draws", _DrawsBeforeForward)
    register("planted-shifts", _DrawsAndShifts)
    got = rows_for(pitfalls.NoiseInEval(), strategies=["planted-draws", "planted-shifts", "hooks+clone"], checks=["values"],
                   layers=["encode", "decode"])
    assert got[("planted-draws", "values", "encode")][:2] == ("pass", "")  # before the noise
    status, diagnosis, detail = got[("planted-draws", "values", "decode")]
    assert (status, diagnosis) == ("fail", "rng_shifted") and "draws from the global RNG" in detail, detail
    assert got[("planted-shifts", "values", "decode")][:2] == ("fail", "unexplained")  # the negative control
    assert set(statuses(got, "hooks+clone", "values").values()) == {("pass", "")}


def test_torchlens_draws_from_the_rng_during_its_pass():
    pytest.importorskip("torchlens")
    got = rows_for(pitfalls.DropoutBetween(), strategies=["torchlens", "captum"], checks=["train_mode"])
    assert got[("torchlens", "train_mode", "second")][:2] == ("fail", "rng_shifted")
    assert got[("captum", "train_mode", "second")][:2] == ("pass", "")


# -- the strategies themselves: real faults and clean cases ----------------------------------


def test_set_independence_catches_fx_pruning_that_hides_an_inplace_op():
    got = rows_for(pitfalls.InplaceAfterTap(), strategies=["fx", "hooks+clone"], checks=["set_independence"], layers=["bn", "head"])
    assert got[("fx", "set_independence", "bn")] == ("fail", "depends_on_request", "alone: right; with the 1 other layers: wrong")
    assert set(statuses(got, "hooks+clone", "set_independence").values()) == {("pass", "")}


@pytest.mark.parametrize("model, size", [(pitfalls.InplaceAfterTap, "32x32"), (pitfalls.FixedSizeInplaceAfterTap, "64x64")])
def test_size_free_checks_run_on_one_example_at_half_size_where_the_model_takes_it(model, size):
    rows = evaluate(model(), layers=["conv", "bn", "head"], strategies=["fx", "hooks+clone"], checks=["set_independence", "autocast"],
                    input_shape=(2, 3, 64, 64))
    got = {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}
    assert got[("fx", "set_independence", "bn")][:2] == ("fail", "depends_on_request")  # the planted fault, caught at either size
    assert got[("hooks+clone", "set_independence", "conv")] == ("pass", "", f"the same alone as with the 2 other layers (one example at {size})")
    assert got[("hooks+clone", "autocast", "head")][:2] == ("pass", "")
    assert f"under autocast(cpu, bfloat16) at {size}" in got[("hooks+clone", "autocast", "head")][2]


def test_a_train_mode_value_that_is_another_node_is_named_wrong_node():
    """In eval mode FX's ``block`` (bound to the conv before the BatchNorm) is within tolerance;
    in train mode it is the conv's batch-mode value, which the recorder finds."""
    got = rows_for(pitfalls.ContainerEndsInNorm(), strategies=["fx", "hooks+clone"], checks=["values", "train_mode"], layers=["block", "block.0"])
    wrong = [layer for layer in ("block", "block.0") if got[("fx", "train_mode", layer)][0] == "fail"]
    assert len(wrong) == 1 and got[("fx", "values", wrong[0])][0] == "pass", got
    status, diagnosis, detail = got[("fx", "train_mode", wrong[0])]
    assert (status, diagnosis) == ("fail", "wrong_node") and "matches node 'block.0.0'" in detail, detail
    assert set(statuses(got, "hooks+clone", "train_mode").values()) == {("pass", "")}


def test_detached_captures_fail_gradients_honestly():
    got = rows_for(pitfalls.Plain(), strategies=["stash", "hooks+clone", "fx"], checks=["gradients"])
    assert statuses(got, "stash", "gradients") == {"first": ("fail", "detached"), "second": ("fail", "detached")}
    for strategy in ("hooks+clone", "fx"):
        assert set(statuses(got, strategy, "gradients").values()) == {("pass", "")}, strategy


def test_train_mode_is_judged_with_batch_statistics():
    got = rows_for(pitfalls.InplaceAfterTap(), strategies=["hooks+clone", "fx", "hooks"], checks=["train_mode"], layers=["bn", "head"])
    assert set(statuses(got, "hooks+clone", "train_mode").values()) == {("pass", "")}
    # fx traced a train graph and an eval graph; switching after the build is honoured
    assert got[("fx", "train_mode", "head")][:2] == ("pass", "")
    # bn is already wrong in eval mode for these two (aliasing): not judged again
    for strategy in ("fx", "hooks"):
        assert got[(strategy, "train_mode", "bn")][:2] == ("skipped", "values_wrong"), strategy


def test_stale_results_catch_a_shared_dictionary_and_left_over_values():
    got = rows_for(pitfalls.SignBranch(), strategies=["hooks+clone", "stash", "ilg"], checks=["stale_results", "repeatable"], layers=["first", "branch", "second"])
    assert got[("hooks+clone", "stale_results", "*")][:2] == ("fail", "mutated_by_next_call")
    assert "the same dictionary is returned by every call" in got[("hooks+clone", "stale_results", "*")][2]
    assert got[("stash", "stale_results", "*")][:2] == ("fail", "left_over")
    # ilg runs the branch whatever the input: not left over, but a module the model does not run
    assert got[("ilg", "stale_results", "*")][:2] == ("pass", "")
    assert got[("ilg", "repeatable", "branch")][:2] == ("fail", "not_called")


def test_kwargs_and_tuples_are_captured_or_reported_never_silently_wrong():
    got = rows_for(pitfalls.KwargsAndTuples(), strategies=["hooks", "stash", "fx", "ilg"], checks=["kwargs_and_tuples"], layers=["block", "head"])
    assert got[("hooks", "kwargs_and_tuples", "block")][:2] == ("pass", "")
    assert got[("stash", "kwargs_and_tuples", "block")][:2] == ("pass", "")  # self.feature = out stores the tuple
    # fx binds the module path to the last node inside it: the tuple's second element
    assert got[("fx", "kwargs_and_tuples", "block")][:2] == ("fail", "wrong_node")
    assert "silently wrong" in got[("fx", "kwargs_and_tuples", "block")][2] and "'block.mean'" in got[("fx", "kwargs_and_tuples", "block")][2]
    assert got[("ilg", "kwargs_and_tuples", "block")][:2] == ("fail", "kwargs_dropped")  # called without scale=
    assert got[("hooks", "kwargs_and_tuples", "head")][:2] == ("skipped", "")


def test_model_untouched_finds_what_torchextractor_leaves_behind():
    got = rows_for(pitfalls.Plain(), strategies=["torchextractor", "hooks"], checks=["model_untouched"])
    status, diagnosis, detail = got[("torchextractor", "model_untouched", "*")]
    assert (status, diagnosis) == ("fail", "model_changed") and "_extractor_fullname" in detail
    assert got[("hooks", "model_untouched", "*")][:2] == ("pass", "")


def test_a_deepcopy_that_comes_back_in_train_mode_is_diagnosed_by_setting_its_mode_back():
    """fx's GraphModule deep-copies into train mode: on a model with batch norm its values are
    wrong (and its first call updates its running statistics), while another copy set to eval
    before its first call gives the truth (mode_changed, measured)."""
    got = rows_for(pitfalls.InplaceAfterTap(), strategies=["fx"], checks=["deepcopy"], layers=["conv", "head"])
    status, diagnosis, detail = got[("fx", "deepcopy", "*")]
    assert (status, diagnosis) == ("fail", "mode_changed") and "set to the original's mode before its first call, gives the truth" in detail


def test_deepcopy_of_hooks_keeps_writing_into_the_original():
    got = rows_for(pitfalls.Plain(), strategies=["hooks+clone", "ilg"], checks=["deepcopy"])
    assert got[("hooks+clone", "deepcopy", "*")][:2] == ("fail", "stale")
    assert got[("ilg", "deepcopy", "*")][:2] == ("pass", "")


def test_scripting_and_export_separate_graph_strategies_from_side_effects():
    got = rows_for(pitfalls.Plain(), strategies=["hooks+clone", "ilg"], checks=["jit_script", "export"])
    assert got[("hooks+clone", "jit_script", "*")][:2] == ("fail", "script_failed")
    assert got[("hooks+clone", "export", "*")][:2] == ("fail", "structure_mismatch")
    assert "left over from tracing" in got[("hooks+clone", "export", "*")][2]
    assert got[("ilg", "jit_script", "*")][:2] == ("pass", "")
    assert got[("ilg", "export", "*")][:2] == ("pass", "")


def test_onnx_outputs_carry_graph_features_not_side_effects():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    got = rows_for(pitfalls.Plain(), strategies=["hooks+clone", "fx"], checks=["onnx"])
    assert got[("fx", "onnx", "*")][:2] == ("pass", "")
    assert got[("hooks+clone", "onnx", "*")][:2] == ("fail", "not_an_output")


def test_the_state_dict_check_gives_every_strategy_other_weights(register):
    """The scrambled model is made once per model and each strategy loads into a copy of it: a
    strategy after one that loaded the model's weights still starts from other weights, so its
    weight outside the state dict is still caught."""
    corrupt, on_attach, inner, model, layers, check, layer, diagnosis = PLANTED["weight_outside_state_dict"]
    register("control-first", corrupted(unchanged, inner=inner))
    register("planted-after", corrupted(corrupt, on_attach=on_attach, inner=inner))
    got = rows_for(model(), strategies=["control-first", "planted-after"], checks=[check], layers=layers)
    assert got[("control-first", check, layer)][:2] == ("pass", "")
    assert got[("planted-after", check, layer)][:2] == ("fail", diagnosis)


def test_state_dict_keys_are_compared_with_the_models():
    got = rows_for(pitfalls.Plain(), strategies=["torchextractor", "hooks"], checks=["state_dict"])
    status, _, detail = got[("torchextractor", "state_dict", "*")]
    assert status == "pass" and "model.first.weight" in detail and "does not load strictly" in detail
    assert "the same keys as the model's state dict" in got[("hooks", "state_dict", "*")][2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_device_move_is_skipped_without_a_gpu():
    got = rows_for(pitfalls.Plain(), strategies=["hooks"], checks=["device_move"])
    assert got[("hooks", "device_move", "*")] == ("skipped", "no_gpu", "no CUDA device here")


def test_mode_graphs_judges_per_mode_requests_where_the_graphs_differ(register):
    """fx takes other nodes in each mode and is right in both; a strategy with one request for
    both modes cannot express it; a planted fault (the train graph's nodes for both modes) fails;
    a model that runs the same nodes in both modes is skipped."""
    from strategies.fx import FxFeatureExtractor

    class BothModesAsTrain(FxFeatureExtractor):
        def attach_per_mode(self, model, *, train_layers, eval_layers, tracer_kwargs=None):
            return super().attach_per_mode(model, train_layers=train_layers, eval_layers=train_layers, tracer_kwargs=tracer_kwargs)

    register("both-modes-as-train", BothModesAsTrain)
    layers = ["first", "aux", "add", "second"]
    got = rows_for(pitfalls.TrainOnlyBranch(), strategies=["fx", "hooks", "both-modes-as-train"], checks=["mode_graphs"], layers=layers)
    assert got[("fx", "mode_graphs", "*")][:2] == ("pass", "") and "4 in train mode, 2 in eval mode" in got[("fx", "mode_graphs", "*")][2]
    assert got[("hooks", "mode_graphs", "*")][0] == "unsupported"
    assert got[("both-modes-as-train", "mode_graphs", "*")][0] == "fail"
    plain = rows_for(pitfalls.Plain(), strategies=["fx"], checks=["mode_graphs"])
    assert plain[("fx", "mode_graphs", "*")][:2] == ("skipped", "")


def test_channels_last_says_whether_the_memory_format_is_kept(register):
    register("contiguous", corrupted(features_mapped(lambda v: v.contiguous())))
    got = rows_for(pitfalls.Plain(), strategies=["hooks+clone", "contiguous"], checks=["channels_last"])
    assert got[("hooks+clone", "channels_last", "first")] == ("pass", "", "in channels_last: equals the truth; memory format kept")
    assert got[("contiguous", "channels_last", "first")] == ("pass", "", "in channels_last: equals the truth; memory format channels_last returned as contiguous")


def test_autocast_judges_in_the_reduced_dtype():
    got = rows_for(pitfalls.InplaceAfterTap(), strategies=["hooks+clone", "hooks", "fx"], checks=["autocast"], layers=["conv", "bn", "head"])
    for strategy in ("hooks+clone", "fx"):
        assert got[(strategy, "autocast", "conv")][:2] == ("pass", ""), got[(strategy, "autocast", "conv")]
    assert "under autocast(cpu, bfloat16)" in got[("hooks+clone", "autocast", "head")][2]
    assert got[("hooks", "autocast", "bn")][1] == "values_wrong"  # wrong already in float32: not judged again


def _probe(*, layers, requested, memo):
    from conformance.judging.behaviour import Probe

    x = torch.zeros(1, 3, 8, 8)
    return Probe(strategy=None, model=torch.nn.Identity(), layers=layers, requested=requested, untrusted={}, tracer_kwargs={},
                 input=x, previous_input=-x, truth=None, previous_truth=None, memo=memo)


def test_a_truth_under_a_condition_is_taken_once_per_model_for_the_whole_request():
    calls, memo = [], {}
    def compute(layers):
        calls.append(layers)
        return {layer: len(calls) for layer in layers}

    wide = _probe(layers=["a", "b"], requested=["a", "b"], memo=memo).oracle_for_layers("train_mode", compute)
    narrow = _probe(layers=["a"], requested=["a", "b"], memo=memo).oracle_for_layers("train_mode", compute)
    assert calls == [["a", "b"]] and narrow is wide
    _probe(layers=["a"], requested=["a", "b"], memo=memo).oracle_for_layers("autocast", compute)
    assert calls == [["a", "b"], ["a", "b"]]  # another condition: another truth


def test_where_the_whole_request_fails_under_a_condition_a_strategy_gets_the_truth_for_its_own_layers():
    from conformance.judging.behaviour import ModelRejects

    memo = {}
    def compute(layers):
        if "b" in layers:
            raise RuntimeError("b fails in train mode")
        return {layer: 1 for layer in layers}

    assert _probe(layers=["a"], requested=["a", "b"], memo=memo).oracle_for_layers("train_mode", compute) == {"a": 1}
    with pytest.raises(ModelRejects, match="b fails in train mode"):
        _probe(layers=["a", "b"], requested=["a", "b"], memo=memo).oracle_for_layers("train_mode", compute)


class FailsInTrainMode(torch.nn.Module):
    """Runs in eval mode only, as DPT's small random configs do (a concatenation of mismatched sizes in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.second = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("sizes of tensors must match")
        return self.second(self.first(x))


def test_mode_graphs_skips_a_model_that_fails_in_train_mode_itself():
    got = rows_for(FailsInTrainMode(), strategies=["hooks"], checks=["mode_graphs", "train_mode"])
    assert got[("hooks", "mode_graphs", "*")][:2] == ("skipped", "model_rejects"), got
    assert "sizes of tensors must match" in got[("hooks", "mode_graphs", "*")][2]
    # control: the same model running in both modes is judged
    assert rows_for(pitfalls.TrainOnlyBranch(), strategies=["fx"], checks=["mode_graphs"], layers=["first", "aux", "second"])[("fx", "mode_graphs", "*")][0] == "pass"


class RunOrderOnly(Strategy):
    """nnsight's constraints, planted on hooks: every requested module must run, in the order the
    model runs them."""

    def attach(self, model, *, layers, tracer_kwargs=None):
        inner, names = get_strategy("hooks+clone").attach(model, layers=layers), [str(layer) for layer in layers]

        class _Extractor(Extractor):
            module = inner.module

            def extract_with(self, module, x):
                ran: list[str] = []
                handles = [module.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: ran.append(name)) for name in names]
                try:
                    extraction = inner.extract_with(module, x)
                finally:
                    for handle in handles:
                        handle.remove()
                if any(name not in ran for name in names):
                    raise RuntimeError("a requested module never ran")
                if list(dict.fromkeys(ran)) != names:
                    raise RuntimeError("requested out of the order the model runs them")
                return extraction

            def close(self):
                inner.close()

        return _Extractor()


class WithSize(torch.nn.Module):
    """Returns a map and its ``torch.Size``: more than tensors (a DETR encoder's ModelOutput, in short)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        h = self.conv(x)
        return h, h.shape[-2:]


class SizeBetween(torch.nn.Module):
    """``b`` returns more than tensors, ``never`` never runs: a request of all four fails as a whole,
    and ``b`` is requested alone."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = WithSize()
        self.c = torch.nn.Conv2d(4, 4, 1)
        self.never = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.b(self.a(x))
        return self.c(h)


def test_the_behaviour_checks_act_on_the_working_layers_in_the_order_the_model_runs_them(register):
    """The request that works is the layers without the suspects plus the suspects that work alone;
    a strategy that takes them in run order only gets them in run order."""
    register("run-order-only", RunOrderOnly)
    got = rows_for(SizeBetween(), strategies=["run-order-only"], checks=["values", "train_mode"], layers=["a", "never", "c", "b"])
    assert statuses(got, "run-order-only", "values") == {"a": ("pass", ""), "b": ("pass", ""), "c": ("pass", ""), "never": ("error", "not_called")}, got
    assert statuses(got, "run-order-only", "train_mode") == {"a": ("pass", ""), "b": ("pass", ""), "c": ("pass", ""), "never": ("error", "not_called")}, got



def test_gradients_are_close_when_bitwise_equal_or_within_tolerance_and_not_otherwise():
    from conformance.judging.behaviour.autograd import _gradient_close

    expected = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert _gradient_close(expected.clone(), expected)
    assert _gradient_close(expected * (1 + 1e-6), expected)
    assert not _gradient_close(expected * 1.01, expected)  # control: a wrong gradient
    assert not _gradient_close(expected.double(), expected + 1)  # control: another dtype, and wrong
    assert not _gradient_close(torch.full_like(expected, float("nan")), torch.full_like(expected, float("nan")))
