"""Hugging Face ``transformers`` vision models (``hf:TYPE``), built from their configs with small
sizes and random weights (norms included: :func:`vary_norms`): nothing is downloaded.

``TYPE`` is a model type of transformers' image-model auto mapping (``dinov2``, ``convnext``,
``siglip_vision_model``); ``hf:ClassName`` names a model class (``hf:Dinov2Model``) and builds it
from its type's small config. The zoo ``hf-families`` holds one model per buildable type.

A small config starts from the type's defaults; transformer-like types get :data:`_VIT` where
their config has those fields, and types whose fields mean something else get their own
overrides (:data:`SMALL_CONFIGS`). A backbone config inside (DETR's ResNet) is made small the
same way. Types that take no ``pixel_values`` or need another library are listed with the
reason (:data:`EXCLUDED`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXCLUDED", "SMALL_CONFIGS", "hf_input_shape", "hf_model_types", "small_config", "vary_norms"]

#: Transformer-like sizes, set where a config has the field: 2 layers of width 32 on 64x64 images.
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 64, "patch_size": 8}
_CONVNEXT = {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "image_size": 64}
_SWIN = {"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "image_size": 64, "window_size": 4}
_RESNET = {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}
#: A backbone inside (DETR's): a small ResNet, or timm's smallest one where the backbone is timm's.
_BACKBONE = {**_RESNET, "backbone": "resnet10t"}
_DETR = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
         "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 10, "use_pretrained_backbone": False}

#: Per type, the overrides that make it small where :data:`_VIT` does not fit its fields.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "convnext": _CONVNEXT, "convnextv2": _CONVNEXT, "dinov3_convnext": _CONVNEXT,
    "swin": _SWIN, "swinv2": _SWIN, "swin2sr": {**_SWIN, "image_size": 32},
    "resnet": _RESNET,
    "regnet": {**_RESNET, "groups_width": 8},
    # hidden_sizes (the stages' widths, embed_dim doubled from stage 2) as the list a checkpoint's config holds:
    # FocalNetBackbone concatenates it to a list, and the class default is a tuple
    "focalnet": {"embed_dim": 16, "hidden_sizes": [32, 64, 128, 128], "depths": [1, 1, 1, 1], "image_size": 64},
    "poolformer": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "timm_wrapper": {"architecture": "resnet10t"},
    "pvt": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 2, 4, 8], "image_size": 64},
    "hiera": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "image_size": [64, 64]},
    "bit": {"embedding_size": 32, "hidden_sizes": [32, 64, 96, 128], "depths": [1, 1, 1, 1], "num_groups": 8},
    "levit": {"image_size": 64, "hidden_sizes": [16, 32, 48], "num_attention_heads": [2, 2, 2], "depths": [1, 1, 1], "key_dim": [8, 8, 8]},
    "mobilevit": {"image_size": 64, "hidden_sizes": [16, 24, 32], "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64], "num_attention_heads": 2},
    "mobilevitv2": {"image_size": 64, "base_attn_unit_dims": [16, 24, 32], "n_attn_blocks": [1, 1, 1]},
    "efficientnet": {"image_size": 64, "width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 320},
    "videomae": {**_VIT, "num_frames": 4, "tubelet_size": 2},
    "vivit": {**_VIT, "num_frames": 4, "tubelet_size": [2, 8, 8]},
    "timesformer": {**_VIT, "num_frames": 2},
    **{name: _DETR for name in ("detr", "conditional_detr", "dab-detr", "deformable_detr", "table-transformer")},
}

#: Image-model types the zoo leaves out, and why.
EXCLUDED = {
    "imagegpt": "takes input_ids (colour-cluster tokens), not pixel_values",
    "videoprism_vision_model": "takes pixel_values_videos, not pixel_values",
    "llama4": "a multimodal language model (billions of parameters at its smallest config)",
    "mllama": "a multimodal language model (billions of parameters at its smallest config)",
    "cohere2_vision": "a multimodal language model (billions of parameters at its smallest config)",
    "timm_backbone": "wraps the timm model its config names: the timm zoos cover those",
    "dinat": "needs the natten library",
    "depth_pro": "two ViT encoders at 1536x1536 patches (about 200M parameters at the smallest sizes tried)",
}


def hf_model_types() -> list[str]:
    """The image-model types of transformers' auto mapping that the zoo builds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

    return sorted(name for name in MODEL_FOR_IMAGE_MAPPING_NAMES if name not in EXCLUDED)


def _fitting(config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides ``config`` has a field of the same kind for (a number for a number, a list for
    a list: PVT's ``num_attention_heads`` is a list per stage, ViT's a number)."""
    return {key: value for key, value in overrides.items()
            if hasattr(config, key) and isinstance(getattr(config, key), (list, tuple)) == isinstance(value, (list, tuple))}


def small_config(model_type: str) -> Any:
    """``model_type``'s config with small sizes (:data:`SMALL_CONFIGS`, else :data:`_VIT`), made by
    the config class itself so that the fields it derives (``stage_names``) follow them."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)  # ValueError for a type transformers does not know
    overrides = _fitting(default, SMALL_CONFIGS.get(model_type, _VIT))
    for inner in ("backbone_config", "vision_config"):
        nested = getattr(default, inner, None)
        if nested is not None:
            fitting = _fitting(nested, _BACKBONE if inner == "backbone_config" else _VIT)
            overrides[inner] = type(nested)(**{**nested.to_dict(), **fitting})
    return AutoConfig.for_model(model_type, **overrides)


def vary_norms(model: Any) -> None:
    """Draw every norm's affine weight and bias around its initial 1 and 0 (from the global random
    state), as a trained checkpoint's differ: at init every LayerNorm of one width computes the
    same function, and no diagnosis could tell which one a strategy ran."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if "Norm" not in type(module).__name__:
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if name in ("weight", "bias") and parameter.is_floating_point():
                    parameter.copy_((1.0 if name == "weight" else 0.0) + 0.2 * torch.randn_like(parameter))


def hf_input_shape(config: Any) -> tuple[int, ...]:
    """``pixel_values``' shape for ``config``: 2 images (or clips of ``num_frames``) at its image size."""
    size = getattr(config, "image_size", 64)
    size = size if isinstance(size, int) else size[0]
    channels = getattr(config, "num_channels", 3)
    frames = getattr(config, "num_frames", None)
    return (2, frames, channels, size, size) if frames else (2, channels, size, size)
