"""``hf-backbone``: a transformers ``*Backbone`` with ``out_features``, loaded with the model's weights.

What users write to get stage features from a Hugging Face vision model, the role timm's
``features_only`` plays: the type's backbone class (``Dinov2Backbone``, ``ConvNextBackbone``;
``AutoBackbone`` picks the same) built from the model's config with ``out_features`` set to the
stages asked for, the model's ``state_dict`` loaded into it (under the backbone's prefix where it
has one; ``strict=False``: a backbone's own
extra modules, such as ConvNeXt's per-stage norms, keep their initial values, as they do for a
user who loads a model checkpoint), and ``backbone(x).feature_maps``.

A requested module is the stage it stands for as users read the model (``stem`` the embeddings,
``stageN`` the encoder's ``N``-th layer: :func:`~strategies.hf_hidden_states.hidden_state_modules`);
whether the stage's feature map is that module's output (backbones normalise and reshape:
DINOv2's ``apply_layernorm``, ``reshape_hidden_states``) is what the checks measure.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from torch import nn

from .base import Arguments, Extraction, Extractor, Strategy, Tap, Unsupported, module_outputs, repeated_modules
from .hf_hidden_states import hidden_state_modules

__all__ = ["HfBackbone"]


class _BackboneExtractor(Extractor):
    def __init__(self, backbone: nn.Module, names: Sequence[str]) -> None:
        self.module = backbone
        self.names = names  # the requested name of each feature map, in stage order

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        output = module(*x) if isinstance(x, Arguments) else module(x)
        return Extraction(features=dict(zip(self.names, output["feature_maps"])))


def _model_weights(backbone: nn.Module, model: nn.Module) -> dict[str, Any]:
    """The model's tensors under the backbone's names: the same name, or the name under the
    backbone's own prefix (``SwinBackbone`` holds the model's modules as ``swin.*``), as
    ``from_pretrained`` maps a model checkpoint's keys to its base model prefix."""
    weights = model.state_dict()
    mapped = {}
    for key in backbone.state_dict():
        rest = key.partition(".")[2]
        source = key if key in weights else rest if rest in weights else None
        if source is not None:
            mapped[key] = weights[source]
    return mapped


class HfBackbone(Strategy):
    """The model type's transformers backbone with ``out_features``, holding the model's weights."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        try:
            import transformers
            from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES
        except ImportError:
            raise Unsupported("transformers is not installed") from None
        if model_type not in MODEL_FOR_BACKBONE_MAPPING_NAMES or not getattr(config, "stage_names", None):
            raise Unsupported(f"no transformers backbone for model type {model_type!r}: AutoBackbone has "
                              f"{len(MODEL_FOR_BACKBONE_MAPPING_NAMES)} types")
        modules = module_outputs(layers, seen_by="a transformers backbone")
        indices, _ = hidden_state_modules(model)
        stages = list(config.stage_names)
        refused = [name for name, path in modules.items() if indices.get(path, len(stages)) >= len(stages)]
        if refused:
            listed = ", ".join(f"{path} ({stages[index]})" for path, index in list(indices.items())[:6] if index < len(stages))
            raise Unsupported(f"a backbone's out_features are its stages: {listed or 'none found'}", layers=refused)
        if repeated_modules(modules):
            raise Unsupported("a backbone returns one feature map per stage", layers=repeated_modules(modules))
        order = sorted(modules, key=lambda name: indices[modules[name]])
        backbone_config = copy.deepcopy(config)
        backbone_config.out_features = [stages[indices[modules[name]]] for name in order]
        backbone = getattr(transformers, MODEL_FOR_BACKBONE_MAPPING_NAMES[model_type])(backbone_config)
        backbone.load_state_dict(_model_weights(backbone, model), strict=False)
        parameter = next(model.parameters(), None)
        if parameter is not None:
            backbone.to(parameter.device)
        backbone.train(model.training)
        return _BackboneExtractor(backbone, order)
