"""Smoke tests on real torchvision and timm models (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance.layers import resolve_layers
from conformance.runner import RunConfig, Timings, model_units
from conformance.zoo import QUICK_ZOO, TIMM_ZOO, build_model, list_models, resolve_model
from strategies import list_strategies

SMOKE = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:resnet18", "timm:efficientnet_b0", "timm:convnext_atto"]


def run_model(reference: str, layers: list[str], input_shape=None):
    spec = resolve_model(reference, input_shape=input_shape)
    config = RunConfig(models=[spec], layers=layers, strategies=list_strategies(), checks=["values", "shape", "dtype", "keys", "model_output", "weights"])
    return {name: rows for name, rows in model_units(spec, config.strategies, config, Timings())}


@pytest.mark.zoo
@pytest.mark.parametrize("reference", SMOKE)
def test_zoo_smoke(reference):
    results = run_model(reference, ["@stages"], input_shape=(1, 3, 128, 128))
    for strategy, rows in results.items():
        assert rows, strategy
        assert not [r for r in rows if r.status == "error"], (strategy, [r for r in rows if r.status == "error"])
    # The clone fix is exact on every stage of every model.
    assert all(r.status == "pass" for r in results["hooks+clone"]), results["hooks+clone"]
    if reference.startswith("timm:"):
        # timm's features_only wrapper runs on the model's own weights and returns the stage outputs.
        timm_rows = {(r.check, r.layer): r for r in results["timm"]}
        assert timm_rows[("weights", "*")].status == "pass"
        assert all(r.status == "pass" for (check, _), r in timm_rows.items() if check == "values")


@pytest.mark.zoo
def test_resnet_stem_aliasing_is_found_on_the_real_model():
    results = run_model("torchvision:resnet18", ["bn1", "layer1"], input_shape=(1, 3, 64, 64))
    values = {s: {r.layer: (r.status, r.diagnosis) for r in rows if r.check == "values"} for s, rows in results.items()}
    for strategy in ("hooks", "stash", "torchextractor", "fx"):
        assert values[strategy]["bn1"] == ("fail", "inplace_aliasing"), strategy
    assert values["hooks+clone"]["bn1"] == ("pass", "")


@pytest.mark.zoo
def test_timm_vit_getter_features_are_reformatted_tokens():
    results = run_model("timm:vit_tiny_patch16_224", ["blocks.11"])
    [row] = [r for r in results["timm"] if r.check == "values"]
    assert (row.status, row.diagnosis) == ("fail", "reformatted")


def test_zoo_lists():
    assert len(TIMM_ZOO) >= 25
    assert len(list_models(zoo="torchvision")) >= 80
    assert list_models(zoo="quick") == list(QUICK_ZOO)
    assert list_models(zoo="all", include="*resnet18") == ["torchvision:resnet18", "timm:resnet18"]
    assert "torchvision:vit_h_14" not in list_models(zoo="torchvision", exclude="vit_h*")


def test_big_models_are_measured_on_the_meta_device():
    assert resolve_model("torchvision:vit_h_14").is_big
    assert not resolve_model("torchvision:resnet18").is_big


def test_model_build_is_seeded():
    spec = resolve_model("torchvision:resnet18")
    a, b = build_model(spec=spec, seed=3), build_model(spec=spec, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not a.training


@pytest.mark.parametrize("reference", ["torchvision:mobilenet_v2", "torchvision:vgg11", "torchvision:densenet121", "timm:convnext_atto"])
def test_stages_are_real_module_paths(reference):
    spec = resolve_model(reference)
    model = build_model(spec=spec, seed=0)
    stages = resolve_layers(model, spec, ["@stages"])
    assert stages and all(model.get_submodule(s) is not None for s in stages)
    assert resolve_layers(model, spec, ["@children", "@children"]) == [n for n, _ in model.named_children()]


@pytest.mark.zoo
def test_fx_binds_a_container_and_its_last_child_to_different_nodes():
    """Two names for one FX node: one of them silently gets the node before it."""
    results = run_model("torchvision:squeezenet1_1", ["features", "features.12"], input_shape=(1, 3, 96, 96))
    values = {r.layer: r for r in results["fx"] if r.check == "values"}
    wrong = [r for r in values.values() if r.status == "fail"]
    assert len(wrong) == 1 and wrong[0].diagnosis == "wrong_layer"
    assert "features.12.expand3x3_activation" in wrong[0].detail
    assert all(r.status == "pass" for r in results["hooks+clone"] if r.check == "values")


def _verdicts(reference: str, *, layers: list[str], strategies: list[str], checks: list[str]):
    from conformance.runner import evaluate

    spec = resolve_model(reference, input_shape=(2, 3, 64, 64))
    rows = evaluate(build_model(spec=spec, seed=0), layers=layers, strategies=strategies, checks=checks, input_shape=spec.input_shape)
    return {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


@pytest.mark.zoo
def test_gradients_catch_an_fx_binding_the_values_tolerance_hides():
    """ConvNeXt's layer scale starts at 1e-6: fx's 'stages.3' (the node before the last
    residual add) is within tolerance of the truth, but its gradients miss the last block."""
    got = _verdicts("timm:convnext_atto", layers=["stages", "stages.3"], strategies=["fx", "hooks+clone"], checks=["values", "gradients"])
    assert got[("fx", "values", "stages.3")][:2] == ("pass", "") and "not bitwise" in got[("fx", "values", "stages.3")][2]
    assert got[("fx", "gradients", "stages.3")][:2] == ("fail", "wrong_node")  # bitwise the node before the last residual add
    assert "stages.3.blocks.1" in got[("fx", "gradients", "stages.3")][2]
    assert got[("hooks+clone", "gradients", "stages.3")][:2] == ("pass", "")


@pytest.mark.zoo
def test_fx_tracing_counts_a_batch_in_timm_batchnorm():
    """create_feature_extractor traces in train mode; timm's BatchNormAct2d then adds 1 to
    the user's num_batches_tracked buffers for real."""
    got = _verdicts("timm:efficientnet_b0", layers=["blocks.1"], strategies=["fx", "timm"], checks=["model_untouched"])
    status, diagnosis, detail = got[("fx", "model_untouched", "*")]
    assert (status, diagnosis) == ("fail", "model_changed") and "num_batches_tracked" in detail
    assert got[("timm", "model_untouched", "*")][:2] == ("pass", "")


def test_the_quick_run_has_no_regression_against_the_committed_baseline(tmp_path):
    """A dependency bump that breaks extraction fails CI here, with the diff as the message."""
    from test_cli import conformance

    baseline = Path(__file__).parent.parent / "reports" / "baselines" / "quick-fast.json"
    # about a minute on 2 idle cores; the limit only stops a hang, on a loaded machine too
    run = conformance("run", "--checks", "fast", "--out", str(tmp_path / "quick"), timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    result = conformance("diff", str(baseline), str(tmp_path / "quick"))
    assert result.returncode == 0, result.stdout[-4000:]
