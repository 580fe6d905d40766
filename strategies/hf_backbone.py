"""``hf-backbone``: a transformers ``*Backbone`` with ``out_features``, loaded with the model's weights.

What users write to get stage features from a Hugging Face vision model, the role timm's
``features_only`` plays: the type's backbone class (``Dinov2Backbone``, ``ConvNextBackbone``:
what ``AutoBackbone`` picks) loaded with ``from_pretrained`` from the model's own checkpoint
(``save_pretrained`` to a temporary directory) with ``out_features`` set to the stages asked for,
and ``backbone(x).feature_maps``. The backbone's own modules that a model checkpoint lacks (the
per-stage ``hidden_states_norms`` of ConvNeXt, Swin and Hiera; Pixio's ``layernorm``) are newly
initialised, as they are for every user who loads a model checkpoint into a backbone.
(``AutoBackbone.from_pretrained`` itself refuses a local directory in transformers 5.23: it asks
the Hub whether the path is a repository id.)

A requested module is the stage it stands for as users read the model (``stem`` the embeddings,
``stageN`` the encoder's ``N``-th layer: :func:`~strategies.hf_hidden_states.hidden_state_modules`);
whether the stage's feature map is that module's output (backbones normalise and reshape:
DINOv2's ``apply_layernorm``, ``reshape_hidden_states``) is what the checks measure.
"""

from __future__ import annotations

import tempfile
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


def _from_model_checkpoint(backbone_class: type, model: nn.Module, out_features: list[str]) -> nn.Module:
    """``backbone_class.from_pretrained`` on the model's own checkpoint (``save_pretrained`` to a
    temporary directory), as users load a backbone from a model's weights: the backbone's own
    modules that the checkpoint lacks (ConvNeXt's ``hidden_states_norms``) are newly initialised,
    and transformers' loading report and progress bars are not printed."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="hf-backbone-") as directory:
            model.save_pretrained(directory)
            return backbone_class.from_pretrained(directory, out_features=out_features)
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class HfBackbone(Strategy):
    """The model type's transformers backbone with ``out_features``, holding the model's weights."""

    def refusal(self, model: nn.Module) -> str | None:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES
        except ImportError:
            return "transformers is not installed"
        if model_type not in MODEL_FOR_BACKBONE_MAPPING_NAMES or not getattr(config, "stage_names", None):
            return f"no transformers backbone for model type {model_type!r}: AutoBackbone has {len(MODEL_FOR_BACKBONE_MAPPING_NAMES)} types"
        return None

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        self.refuse(model)
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

        config = model.config
        model_type = config.model_type
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
        backbone_class = getattr(transformers, MODEL_FOR_BACKBONE_MAPPING_NAMES[model_type])
        backbone = _from_model_checkpoint(backbone_class, model, [stages[indices[modules[name]]] for name in order])
        parameter = next(model.parameters(), None)
        if parameter is not None:
            backbone.to(parameter.device)
        backbone.train(model.training)
        return _BackboneExtractor(backbone, order)
