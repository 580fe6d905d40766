"""Each planted pitfall gets the verdict, and the diagnosis, that explains it."""

import pytest

import pitfalls
from conformance.running.runner import evaluate

STRATEGIES = ["stash", "stash+clone", "hooks", "hooks+clone", "ilg", "torchextractor", "torchextractor+clone", "fx"]


def verdicts(model, layers, strategies=STRATEGIES):
    rows = evaluate(model, layers=layers, strategies=strategies, checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    return {(r.strategy, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


def test_inplace_op_after_tap_is_diagnosed_as_aliasing():
    got = verdicts(pitfalls.InplaceAfterTap(), ["bn", "head"])
    for strategy in ("stash", "hooks", "torchextractor", "fx"):
        assert got[(strategy, "bn")][:2] == ("fail", "inplace_aliasing"), strategy
    for strategy in ("stash+clone", "hooks+clone", "torchextractor+clone"):
        assert got[(strategy, "bn")][0] == "pass", strategy


def test_inplace_op_after_tap_is_harmless_when_the_strategy_prunes_after_it():
    got = verdicts(pitfalls.InplaceAfterTap(), ["bn"], strategies=["ilg", "fx", "hooks"])
    assert got[("ilg", "bn")][0] == "pass"
    assert got[("fx", "bn")][0] == "pass"
    assert got[("hooks", "bn")][:2] == ("fail", "inplace_aliasing")


def test_reused_module_names_the_call_that_was_returned():
    got = verdicts(pitfalls.ReusedModule(), ["act"])
    assert got[("fx", "act")] == ("fail", "reused_module", "matches call 1 of 2")
    for strategy in ("stash", "hooks", "torchextractor"):
        assert got[(strategy, "act")][0] == "pass", strategy


def test_children_registered_out_of_order_break_replaying_strategies():
    got = verdicts(pitfalls.ReorderedChildren(), ["first", "second"])
    assert got[("ilg", "second")][:2] == ("error", "children_not_chained")  # replaying the children raises the same
    assert "registration order is second, first, head" in got[("ilg", "second")][2]
    for strategy in ("hooks", "fx", "torchextractor", "stash"):
        assert got[(strategy, "second")][0] == "pass", strategy


def test_functional_op_between_children_is_skipped_by_ilg():
    got = verdicts(pitfalls.FunctionalBetween(), ["first", "second"])
    assert got[("ilg", "first")][0] == "pass"
    assert got[("ilg", "second")][:2] == ("fail", "children_not_chained")
    assert got[("fx", "second")][0] == "pass"


def test_data_dependent_control_flow_defeats_fx_tracing_only():
    got = verdicts(pitfalls.DataDependentControlFlow(), ["first", "second"])
    status, diagnosis, detail = got[("fx", "second")]
    assert (status, diagnosis) == ("error", "untraceable") and "TraceError" in detail
    for strategy in ("hooks", "stash", "torchextractor"):
        assert got[(strategy, "second")][0] == "pass", strategy


VALUE_CHECKS = ["values", "shape", "dtype", "keys", "model_output", "weights", "repeatable"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_clean_model_passes_every_value_check_for_every_strategy(strategy):
    rows = evaluate(pitfalls.Plain(), layers=["first", "second"], strategies=[strategy], checks=VALUE_CHECKS, input_shape=pitfalls.INPUT_SHAPE)
    assert set(rows["check"]) == set(VALUE_CHECKS)
    assert (rows["status"] == "pass").all(), rows[rows.status != "pass"].to_dict("records")
    assert rows.query("check == 'values'")["bitwise"].all()


def test_timm_on_a_non_timm_model_is_unsupported_not_a_crash():
    rows = evaluate(pitfalls.Plain(), layers=["first"], strategies=["timm"], input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["status"] == "unsupported").all()
    assert rows["detail"].str.contains("not a timm model").all()


def test_ilg_marks_only_nested_layers_unsupported():
    rows = evaluate(pitfalls.InplaceAfterTap(), layers=["conv", "head"], strategies=["ilg"], checks=VALUE_CHECKS, input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["status"] == "pass").all()
    import torchvision

    rows = evaluate(torchvision.models.resnet18(), layers=["layer1", "layer2.0"], strategies=["ilg"], checks=["values"])
    got = dict(zip(rows.layer, rows.status))
    assert got == {"layer1": "pass", "layer2.0": "unsupported"}


# The strategies users weigh beside the six: TorchLens, Captum, nnsight, timm forward_intermediates.

def test_torchlens_and_captum_copy_before_an_inplace_op_nnsight_does_not():
    got = verdicts(pitfalls.InplaceAfterTap(), ["bn", "head"], strategies=["torchlens", "captum", "nnsight"])
    assert got[("torchlens", "bn")][0] == "pass"
    assert got[("captum", "bn")][0] == "pass"
    assert got[("nnsight", "bn")][:2] == ("fail", "inplace_aliasing")
    assert got[("nnsight", "head")][0] == "pass"


def test_nnsight_output_is_a_reused_modules_first_call():
    got = verdicts(pitfalls.ReusedModule(), ["act"], strategies=["torchlens", "captum", "nnsight"])
    assert got[("nnsight", "act")] == ("fail", "reused_module", "matches call 1 of 2")
    assert got[("torchlens", "act")][0] == "pass"
    assert got[("captum", "act")][0] == "pass"


def test_torchlens_reads_each_call_of_a_reused_module_by_its_node_name():
    rows = evaluate(pitfalls.ReusedModule(), layers=["act", "act_1"], strategies=["torchlens"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    assert set(zip(rows.layer, rows.status)) == {("act", "pass"), ("act_1", "pass")}


def test_op_nodes_are_unsupported_by_torchlens_with_the_reason():
    rows = evaluate(pitfalls.FunctionalBetween(), layers=["first", "mul"], strategies=["torchlens"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    got = {r.layer: (r.status, r.detail) for r in rows.itertuples()}
    assert got["first"][0] == "pass"
    assert got["mul"][0] == "unsupported" and "TorchLens names ops by its own labels" in got["mul"][1]


def test_captum_and_torchlens_return_detached_features_nnsight_does_not():
    rows = evaluate(pitfalls.Plain(), layers=["first"], strategies=["captum", "torchlens", "nnsight"], checks=["gradients"], input_shape=pitfalls.INPUT_SHAPE)
    got = {r.strategy: (r.status, r.diagnosis) for r in rows.itertuples()}
    assert got["captum"] == ("fail", "detached")
    assert got["torchlens"] == ("fail", "detached")
    assert got["nnsight"] == ("pass", "")


@pytest.fixture(scope="module")
def tiny_vit():
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()


def test_timm_intermediates_returns_vit_blocks_as_feature_maps(tiny_vit):
    rows = evaluate(tiny_vit, layers=["blocks.1", "blocks.11", "blocks.11.mlp"], strategies=["timm-intermediates"],
                    checks=["values"], input_shape=(1, 3, 32, 32))
    got = {r.layer: (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}
    for block in ("blocks.1", "blocks.11"):
        assert got[block][:2] == ("fail", "reformatted"), got[block]
    assert got["blocks.11.mlp"][0] == "unsupported" and "forward_intermediates can take only: blocks.0" in got["blocks.11.mlp"][2]


def test_timm_intermediates_returns_resnet_stages_exactly_in_execution_order():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False).eval()
    rows = evaluate(model, layers=["layer4", "act1", "layer2"], strategies=["timm-intermediates"],
                    checks=["values", "keys"], input_shape=(1, 3, 32, 32))
    got = {(r.check, r.layer): (r.status, r.detail) for r in rows.itertuples()}
    assert {got[("values", layer)][0] for layer in ("layer4", "act1", "layer2")} == {"pass"}
    assert got[("keys", "*")] == ("fail", "returned in the order act1, layer2, layer4")


def test_timm_intermediates_on_a_non_timm_model_is_unsupported_not_a_crash():
    rows = evaluate(pitfalls.Plain(), layers=["first"], strategies=["timm-intermediates"], input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["status"] == "unsupported").all()
    assert rows["detail"].str.contains("not a timm model with forward_intermediates").all()


def test_the_truth_keeps_one_copy_of_what_the_pass_left_unchanged_and_two_of_what_it_changed():
    """After the pass the oracle keeps a layer's output again only where a later op changed it
    (the in-place ReLU after ``bn``, the scaled entry of ``head``'s dict); an unchanged output is
    the capture's own clone, not a second copy of the same values."""
    import torch

    from conformance.truth.oracle import capture

    x = torch.randn(*pitfalls.INPUT_SHAPE)
    inplace = capture(pitfalls.InplaceAfterTap().eval(), x, layers=["conv", "bn", "head"]).layers
    assert inplace["conv"].after_forward[0] is inplace["conv"].calls[0]
    assert inplace["head"].after_forward[0] is inplace["head"].calls[0]
    assert inplace["bn"].after_forward[0] is not inplace["bn"].calls[0]
    assert not torch.equal(inplace["bn"].after_forward[0], inplace["bn"].calls[0])
    entry = capture(pitfalls.InplaceEntry().eval(), x, layers=["conv", "head"]).layers
    assert entry["conv"].after_forward[0] is entry["conv"].calls[0]
    assert torch.equal(entry["head"].after_forward[0]["mask"], 2 * entry["head"].calls[0]["mask"])
