"""``hf-hidden-states``: ``hidden_states[i]`` judged against the module users take it for, with the
mechanism named where it is another module's output; planted pitfalls with controls, and the
real transformers models where it is measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conformance.running.runner import evaluate
from strategies.hf_hidden_states import hidden_state_modules


class HiddenStatesModel(nn.Module):
    """Shaped like a transformers vision model: ``embeddings``, ``encoder.layer``, ``layernorm``;
    ``forward(x, output_hidden_states=...)`` returns a dict. ``normed_first`` plants CLIP's
    pitfall: ``hidden_states[0]`` is the embeddings after ``pre_norm``, not the embeddings."""

    def __init__(self, *, normed_first: bool = False, asked_changes_output: bool = False) -> None:
        super().__init__()
        self.config = SimpleNamespace(output_hidden_states=False)
        self.embeddings = nn.Linear(8, 8)
        self.pre_norm = nn.LayerNorm(8)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.layernorm = nn.LayerNorm(8)
        self.normed_first = normed_first
        self.asked_changes_output = asked_changes_output  # planted: asking for hidden states changes last_hidden_state

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> dict:
        hidden = self.embeddings(x)
        normed = self.pre_norm(hidden)
        states = [normed if self.normed_first else hidden]
        hidden = normed
        for layer in self.encoder.layer:
            hidden = layer(hidden)
            states.append(hidden)
        last = self.layernorm(hidden) + (1.0 if output_hidden_states and self.asked_changes_output else 0.0)
        # as a ModelOutput: a field that is None is left out
        return {"last_hidden_state": last, **({"hidden_states": tuple(states)} if output_hidden_states else {})}


LAYERS = ["embeddings", "encoder.layer.0", "encoder.layer.1", "layernorm"]


def values(model: nn.Module) -> dict[str, tuple[str, str]]:
    rows = evaluate(model, layers=LAYERS, strategies=["hf-hidden-states"], checks=["values"], input_shape=(2, 4, 8))
    return {row.layer: (row.status, row.diagnosis or "", row.detail or "") for row in rows.fillna({"diagnosis": "", "detail": ""}).itertuples()}


def test_the_mapping_is_read_from_the_structure_as_users_read_it():
    indices, final = hidden_state_modules(HiddenStatesModel())
    assert indices == {"embeddings": 0, "encoder.layer.0": 1, "encoder.layer.1": 2} and final == "layernorm"


def test_a_normalised_first_hidden_state_is_named_by_the_module_that_produced_it():
    planted = values(HiddenStatesModel(normed_first=True))
    status, diagnosis, detail = planted["embeddings"]
    assert (status, diagnosis) == ("fail", "wrong_layer") and "pre_norm" in detail, planted["embeddings"]
    assert all(planted[layer][0] == "pass" for layer in LAYERS[1:]), planted
    # control: the same model giving the embeddings' own output passes every layer
    assert all(status == "pass" for status, _, _ in values(HiddenStatesModel()).values())


def test_the_returned_output_is_judged_on_the_plain_calls_fields():
    def model_output(model: nn.Module) -> tuple[str, str, str]:
        rows = evaluate(model, layers=LAYERS, strategies=["hf-hidden-states"], checks=["model_output"], input_shape=(2, 4, 8))
        row = rows.fillna({"diagnosis": ""}).iloc[0]
        return row.status, row.diagnosis, row.detail

    status, _, detail = model_output(HiddenStatesModel())
    assert status == "pass" and "it adds hidden_states" in detail, detail
    # planted: the output asked for with hidden states has another last_hidden_state
    assert model_output(HiddenStatesModel(asked_changes_output=True))[:2] == ("fail", "output_changed")


def test_other_modules_and_other_models_cannot_be_requested():
    rows = evaluate(HiddenStatesModel(), layers=["pre_norm", "embeddings"], strategies=["hf-hidden-states"], checks=["values"], input_shape=(2, 4, 8))
    by_layer = dict(zip(rows["layer"], rows["status"]))
    assert by_layer == {"pre_norm": "unsupported", "embeddings": "pass"}
    plain = nn.Sequential(nn.Linear(8, 8))
    rows = evaluate(plain, layers=["0"], strategies=["hf-hidden-states"], checks=["values"], input_shape=(2, 8))
    assert rows["status"].tolist() == ["unsupported"] and "not a Hugging Face transformers model" in rows["detail"].iloc[0]


@pytest.mark.parametrize("reference, layers, final_is_last_hidden_state", [
    ("hf:vit", ["embeddings", "layers.0", "layers.1", "layernorm"], True),
    ("hf:dinov2", ["embeddings", "encoder.layer.0", "encoder.layer.1", "layernorm"], True),
    ("hf:convnext", ["embeddings", "encoder.stages.0", "encoder.stages.3", "layernorm"], False),
])
def test_real_models_hidden_states_and_last_hidden_state_as_measured(reference, layers, final_is_last_hidden_state):
    pytest.importorskip("transformers")
    from conformance.zoo.specs import build_model, resolve_model

    spec = resolve_model(reference)
    rows = evaluate(build_model(spec=spec, seed=0), layers=layers, strategies=["hf-hidden-states"], checks=["values"],
                    input_shape=spec.input_shape).fillna({"diagnosis": "", "detail": ""})
    by_layer = {row.layer: (row.status, row.diagnosis, row.detail) for row in rows.itertuples()}
    assert all(by_layer[layer][0] == "pass" for layer in layers[:-1]), by_layer
    if final_is_last_hidden_state:  # ViT, DINOv2: last_hidden_state is the final norm's output, not hidden_states[-1]
        assert by_layer["layernorm"][0] == "pass"
    else:  # ConvNeXt: its layernorm acts on the pooled output; last_hidden_state is the last stage's
        status, diagnosis, detail = by_layer["layernorm"]
        assert (status, diagnosis) == ("fail", "wrong_layer") and "encoder.stages.3" in detail, by_layer["layernorm"]


def stage_rows(reference: str, layers: list[str]) -> dict[str, tuple[str, str, str]]:
    from conformance.zoo.specs import build_model, resolve_model

    spec = resolve_model(reference)
    rows = evaluate(build_model(spec=spec, seed=0), layers=layers, strategies=["hf-backbone"], checks=["values", "weights"],
                    input_shape=spec.input_shape).fillna({"diagnosis": "", "detail": ""})
    return {f"{row.check}:{row.layer}": (row.status, row.diagnosis, row.detail) for row in rows.itertuples()}


def test_a_backbone_holds_the_models_weights_and_its_stages_are_judged():
    pytest.importorskip("transformers")
    resnet = stage_rows("hf:resnet", ["embedder", "encoder.stages.0", "encoder.stages.3"])
    assert all(status == "pass" for status, _, _ in resnet.values()), resnet  # ResNetBackbone returns the stages as they are
    # Swin's backbone holds the model's modules under its own prefix, loaded from the model's checkpoint,
    # and per-stage norms of its own that the checkpoint lacks: only those are not the model's
    status, diagnosis, detail = stage_rows("hf:swin", ["encoder.layers.0"])["weights:*"]
    assert (status, diagnosis) == ("fail", "weights_differ") and "hidden_states_norms" in detail and "swin." not in detail, detail
    # negative control: DINOv2's backbone normalises and reshapes each stage (apply_layernorm,
    # reshape_hidden_states): its feature maps are not the layers' outputs, and values says so
    dinov2 = stage_rows("hf:dinov2", ["encoder.layer.0", "encoder.layer.1"])
    assert dinov2["values:encoder.layer.0"][0] == "fail" and dinov2["weights:*"][0] == "pass", dinov2


def test_a_backbone_takes_only_its_stages_of_a_type_that_has_one():
    pytest.importorskip("transformers")
    assert stage_rows("hf:resnet", ["pooler"])["values:pooler"][0] == "unsupported"
    vit = stage_rows("hf:vit", ["layers.0"])  # transformers has no ViT backbone
    assert vit["values:layers.0"][0] == "unsupported" and "no transformers backbone" in vit["values:layers.0"][2], vit


def test_models_without_hidden_states_or_with_fewer_than_their_layers_are_unsupported_with_the_reason():
    pytest.importorskip("transformers")
    from conformance.zoo.specs import build_model, resolve_model

    def rows(reference: str, layers: list[str]) -> dict[str, tuple[str, str]]:
        spec = resolve_model(reference)
        frame = evaluate(build_model(spec=spec, seed=0), layers=layers, strategies=["hf-hidden-states"], checks=["values"],
                         input_shape=spec.input_shape).fillna({"detail": ""})
        return {row.layer: (row.status, row.detail) for row in frame.itertuples()}

    detr = rows("hf:detr", ["encoder.layers.0"])["encoder.layers.0"]
    assert detr[0] == "unsupported" and "holds no hidden_states (it has decoder_hidden_states, encoder_hidden_states)" in detr[1], detr
    # MobileNetV2 has 16 layers and 16 hidden states: no room for its embeddings'; the layers within are judged
    mobilenet = rows("hf:mobilenet_v2", ["layer.14", "layer.15"])
    assert mobilenet["layer.15"][0] == "unsupported" and "hidden_states has 16 entries: layer.15 would be hidden_states[16]" in mobilenet["layer.15"][1], mobilenet
    assert mobilenet["layer.14"][0] == "fail", mobilenet  # hidden_states[15] is layer.15's output (wrong_layer)
