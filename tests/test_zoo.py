"""Smoke tests on real torchvision and timm models (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance.truth.layers import resolve_layers
from conformance.running.runner import RunConfig, model_units
from conformance.core.timing import Timings
from conformance.core.errors import ConformanceError
from conformance.zoo.lists import list_models
from conformance.zoo.specs import BIG_MODEL_PARAMS, QUICK_ZOO, TIMM_ZOO, ModelSpec, build_model, resolve_model
from strategies import list_strategies
from strategies.base import Arguments

SMOKE = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:resnet18", "timm:efficientnet_b0", "timm:convnext_atto"]


def run_model(reference: str, layers: list[str], input_shape=None, strategies=None):
    spec = resolve_model(reference, input_shape=input_shape)
    config = RunConfig(models=[spec], layers=layers, strategies=strategies or list_strategies(),
                       checks=["values", "shape", "dtype", "keys", "model_output", "weights", "model_untouched"])
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


def test_timm_families_hold_one_model_per_timm_module_chosen_by_the_rule():
    import timm

    from conformance.zoo.families import choose_family_model, timm_families

    choices = {choice.module: choice for choice in timm_families()}
    assert sorted(choices) == sorted(timm.list_modules())
    assert len(list_models(zoo="timm-families")) == len(choices)
    # the shipped choice is the rule's, recomputed here on three modules (the rest takes minutes)
    for module in ("vgg", "convit", "xception_aligned"):
        assert choose_family_model(module) == choices[module], module
    vgg = choices["vgg"]
    assert vgg.model == "vgg11" and vgg.candidates == len(timm.list_models(module="vgg"))
    assert resolve_model(vgg.reference).family == "vgg" and resolve_model(vgg.reference).input_shape == (2, *vgg.input_size)


def test_torchvision_families_hold_the_smallest_model_of_each_torchvision_module_without_downloading(monkeypatch):
    import torch.hub
    import torchvision

    from conformance.zoo.families import torchvision_families

    downloads = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, *a, **k: downloads.append(url))
    torchvision_families.cache_clear()
    choices = {choice.module: choice for choice in torchvision_families()}
    assert downloads == []  # the detectors' and segmenters' backbones are built without weights
    modules = {torchvision.models.get_model_builder(n).__module__.removeprefix("torchvision.models.") for n in torchvision.models.list_models()}
    assert set(choices) == modules and len(list_models(zoo="torchvision-families")) == len(choices)
    assert choices["resnet"].model == "resnet18" and choices["resnet"].candidates == 10  # wide_resnet and resnext are resnet.py's too
    assert choices["video.resnet"].model == "mc3_18"  # of r3d_18, mc3_18 and r2plus1d_18
    assert choices["regnet"].model == "regnet_y_400mf"  # RegNet builds with tensors, so it is counted from its weights' metadata
    assert choices["quantization.resnet"].params == choices["resnet"].params  # counted before quantization
    assert choices["optical_flow.raft"].input_size == resolve_model("torchvision:raft_small").input_shape


def test_torchvision_groups_are_zoos_with_the_inputs_their_models_take():
    groups = {group: list_models(zoo=f"torchvision-{group}") for group in ("segmentation", "video", "quantization", "detection", "optical-flow")}
    assert {group: len(models) for group, models in groups.items()} == {"segmentation": 6, "video": 9, "quantization": 12, "detection": 12, "optical-flow": 2}
    assert len(list_models(zoo="torchvision-all")) == 80 + 6 + 9 + 12 + 12 + 2
    assert resolve_model("torchvision:r3d_18").input_shape == (2, 3, 8, 112, 112)
    assert resolve_model("torchvision:r3d_18").family == "video.resnet"
    previous, current = resolve_model("torchvision:raft_small").inputs(seed=0, device="cpu")
    assert type(current) is Arguments and [tuple(t.shape) for t in current] == [(2, 3, 128, 128)] * 2
    assert type(previous) is Arguments and torch.equal(previous[1], -current[1])
    _, images = resolve_model("torchvision:fcos_resnet50_fpn").inputs(seed=0, device="cpu")
    assert type(images) is list and [tuple(t.shape) for t in images] == [(3, 224, 224)] * 2


@pytest.mark.zoo
def test_two_images_and_a_list_of_images_reach_the_oracle_and_every_strategy():
    """RAFT takes two images; a detector takes a list of images and returns a list of dicts,
    with torchvision's ``ImageList`` (an object holding tensors) between its children."""
    strategies = ["hooks+clone", "ilg", "captum"]
    flow = run_model("torchvision:raft_small", ["feature_encoder", "context_encoder"], input_shape=(1, 3, 128, 128), strategies=strategies)
    assert all(r.status == "pass" for r in flow["hooks+clone"] + flow["captum"]), flow
    assert {(r.status, r.detail) for r in flow["ilg"]} == {("unsupported", "IntermediateLayerGetter's forward takes one input; the model takes 2 positional arguments")}
    detection = run_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", ["transform", "backbone"], input_shape=(2, 3, 96, 96),
                          strategies=strategies)
    assert all(r.status == "pass" for r in detection["hooks+clone"]), detection["hooks+clone"]
    transform = {r.check: r for r in detection["hooks+clone"] if r.layer == "transform"}
    assert transform["values"].status == "pass" and transform["values"].bitwise  # the ImageList's tensors compared, not its identity
    ilg = {(r.layer, r.check): r for r in detection["ilg"]}
    assert (ilg[("transform", "values")].status, ilg[("backbone", "values")].diagnosis) == ("pass", "children_not_chained")
    assert {r.diagnosis for r in detection["captum"] if r.status != "pass"} == {"non_tensor_output"}


@pytest.mark.zoo
def test_video_segmentation_and_quantized_models_are_judged():
    """A 5-D clip, a dict output and int8 features go through the same oracle and checks."""
    strategies = ["hooks+clone", "fx"]
    video = run_model("torchvision:r3d_18", ["@children"], input_shape=(1, 3, 4, 32, 32), strategies=strategies)
    segmentation = run_model("torchvision:lraspp_mobilenet_v3_large", ["backbone", "classifier"], input_shape=(1, 3, 64, 64), strategies=strategies)
    for rows in (video["hooks+clone"], video["fx"], segmentation["hooks+clone"]):
        assert all(r.status == "pass" for r in rows) and sum(r.check == "values" for r in rows) >= 2, rows
    # the segmentation backbone returns a dict of two maps; FX returns one tensor from inside it
    fx_values = {r.layer: r for r in segmentation["fx"] if r.check == "values"}
    assert fx_values["classifier"].status == "pass" and fx_values["backbone"].status == "fail"
    assert "expected OrderedDict" in fx_values["backbone"].detail
    quantized = run_model("torchvision:quantized_resnet18", ["layer1", "layer4"], input_shape=(1, 3, 64, 64), strategies=strategies)
    for strategy, rows in quantized.items():
        verdicts = {(r.layer, r.check): r for r in rows}
        assert verdicts[("layer1", "values")].status == "pass" and verdicts[("layer1", "values")].bitwise, strategy
        assert verdicts[("*", "weights")].status == "pass" and verdicts[("*", "model_untouched")].status == "pass", strategy


def test_zoo_lists():
    assert len(TIMM_ZOO) >= 25
    assert len(list_models(zoo="torchvision")) >= 80
    assert list_models(zoo="quick") == list(QUICK_ZOO)
    assert list_models(zoo="all", include="*resnet18") == ["torchvision:resnet18", "timm:resnet18"]
    assert "torchvision:vit_h_14" not in list_models(zoo="torchvision", exclude="vit_h*")


def test_big_models_are_measured_on_the_meta_device():
    assert resolve_model("torchvision:vit_h_14").is_big
    assert not resolve_model("torchvision:resnet18").is_big


class _TensorsAtBuild(torch.nn.Module):
    """A constructor that computes with tensors, so it cannot run on the meta device (as RegNet's
    and the quantized models' cannot), with ``size`` parameters."""

    def __init__(self, size: int, builds: list[str]) -> None:
        super().__init__()
        if torch.empty(0).is_meta:
            raise NotImplementedError("Cannot copy out of meta tensor")
        builds.append("cpu")
        self.weight = torch.nn.Parameter(torch.ones(1) if size == 1 else torch.empty(size))
        self.head = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.weight[0])


@pytest.mark.parametrize("size, status", [(BIG_MODEL_PARAMS + 1, "skipped"), (1, "pass")])
def test_a_model_the_meta_device_cannot_build_is_built_once_and_counted(size, status):
    builds: list[str] = []
    spec = ModelSpec("torchvision", "tensors_at_build", (1, 4), lambda: _TensorsAtBuild(size, builds))
    assert spec.param_count is None and not spec.is_big
    config = RunConfig(models=[spec, spec], layers=["head"], strategies=["hooks"], checks=["values"])
    rows = [row for _, results in model_units(spec, ["hooks"], config, Timings()) for row in results]
    assert builds == ["cpu"]
    assert {row.status for row in rows} == {status}
    if status == "skipped":
        assert {row.diagnosis for row in rows} == {"big_model"} and f"{(BIG_MODEL_PARAMS + 1) / 1e6:.0f}M parameters" in rows[0].detail


def test_model_build_is_seeded():
    spec = resolve_model("torchvision:resnet18")
    a, b = build_model(spec=spec, seed=3), build_model(spec=spec, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not a.training


@pytest.mark.parametrize("reference", ["torchvision:mobilenet_v2", "torchvision:vgg11", "torchvision:densenet121", "timm:convnext_atto",
                                       "torchvision:quantized_mobilenet_v2"])
def test_stages_are_real_module_paths(reference):
    """A quantized model cannot run on the meta device; its resolution changes are probed on the CPU."""
    spec = resolve_model(reference)
    model = build_model(spec=spec, seed=0)
    stages = resolve_layers(model, spec, ["@stages"])
    assert stages and all(model.get_submodule(s) is not None for s in stages)
    if reference.startswith("torchvision:") and "mobilenet_v2" in reference:
        assert [str(s) for s in stages] == ["features.1", "features.3", "features.6", "features.13", "features.18"]
    assert resolve_layers(model, spec, ["@children", "@children"]) == [n for n, _ in model.named_children()]


@pytest.mark.parametrize("reference, stages", [
    ("torchvision:swin_t", ["features.1", "features.3", "features.5", "features.7"]),
    ("torchvision:swin3d_t", ["features.0", "features.2", "features.4", "features.6"]),  # no patch embedding in features
])
def test_swin_stages_are_its_block_sequences_in_2d_and_3d(reference, stages):
    spec = resolve_model(reference)
    assert [str(s) for s in resolve_layers(build_model(spec=spec, seed=0), spec, ["@stages"])] == stages


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
    from conformance.running.runner import evaluate

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


def test_the_quick_run_has_no_regression_against_the_committed_baseline(quick_fast_run):
    """A dependency bump that breaks extraction fails CI here, with the diff as the message."""
    from test_cli import conformance

    baseline = Path(__file__).parent.parent / "reports" / "baselines" / "quick-fast.json"
    result = conformance("diff", str(baseline), str(quick_fast_run))
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.zoo
def test_stages_leave_out_feature_info_entries_that_name_no_module():
    """timm's HRNet names ``stem`` and ``stage1`` in feature_info, modules of its features wrapper
    only; TResNet names ``''``, the model itself."""
    spec = resolve_model("timm:hrnet_w18_small")
    model = build_model(spec=spec, seed=0)
    assert [str(tap) for tap in resolve_layers(model, spec, ["@stages"])] == ["stage2", "stage3", "stage4"]
    spec = resolve_model("timm:tresnet_m")
    model = build_model(spec=spec, seed=0)
    assert model.feature_info[0]["module"] == ""
    assert [str(tap) for tap in resolve_layers(model, spec, ["@stages"])] == ["body.layer1", "body.layer2", "body.layer3", "body.layer4"]


def test_the_hf_zoo_builds_one_small_model_per_image_model_type_and_runs_it():
    pytest.importorskip("transformers")
    from transformers.modeling_outputs import ModelOutput

    from conformance.zoo.hf import EXCLUDED

    references = list_models(zoo="hf-families")
    assert len(references) >= 40 and not any(ref.removeprefix("hf:") in EXCLUDED for ref in references)
    for reference in references:
        spec = resolve_model(reference)
        assert spec.family == reference.removeprefix("hf:") and spec.param_count < 10e6, reference
        model = build_model(spec=spec, seed=0)
        _, x = spec.inputs(seed=0, device="cpu")
        with torch.no_grad():
            assert isinstance(model(x), ModelOutput), reference


def test_hf_stages_are_the_modules_hidden_states_stand_for_and_norms_differ():
    pytest.importorskip("transformers")
    from conformance.truth.layers import stage_layers

    def stages(reference: str) -> list[str]:
        spec = resolve_model(reference)
        return stage_layers(build_model(spec=spec, seed=0), spec)

    assert stages("hf:dinov2") == ["embeddings", "encoder.layer.0", "encoder.layer.1", "layernorm"]
    assert stages("hf:dinov3_vit") == ["embeddings", "model.layer.0", "model.layer.1", "norm"]  # its encoder is a child named model
    assert stages("hf:detr")[0] == "encoder.layers.0"  # the encoder, not the DetrConvEncoder backbone before it
    # the blocks, not the patch embeddings listed before them; a stage that is a list of blocks: its last block
    assert stages("hf:poolformer")[0] == "encoder.block.0.0"
    assert stages("hf:timm_wrapper") == [f"timm_model.{name}" for name in ("act1", "layer1", "layer2", "layer3", "layer4")]
    # norms drawn at random: no two LayerNorms of one width compute the same function, as at init
    dinov2 = build_model(spec=resolve_model("hf:dinov2"), seed=0)
    weights = [module.weight for module in dinov2.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(weights) > 2 and not any(torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1:])


def test_hf_references_name_a_type_or_a_class_and_bad_ones_get_a_hint():
    pytest.importorskip("transformers")
    by_class = resolve_model("hf:Dinov2Model")
    assert by_class.family == "dinov2" and type(build_model(spec=by_class, seed=0)).__name__ == "Dinov2Model"
    for reference, message in (("hf:dinov", "did you mean hf:dinov2"), ("hf:Dinov2Modle", "unknown model 'hf:Dinov2Modle'"),
                               ("hf:BertConfig", "unknown model 'hf:BertConfig'")):
        with pytest.raises(ConformanceError, match=message):
            resolve_model(reference)
