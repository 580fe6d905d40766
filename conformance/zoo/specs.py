"""The model zoo: what can be run, how it is built, and at what input size.

A model is named ``source:name``: ``torchvision:resnet18``, ``timm:convnext_tiny``,
``hf:dinov2`` (a transformers model type or class, :mod:`conformance.zoo.hf`), ``path/to/file.py:factory`` or ``package.module:factory`` (a callable returning an
``nn.Module``). Weights are always random, from a fixed seed; nothing is downloaded.

Example::

    >>> from conformance.zoo.specs import resolve_model, build_model
    >>> spec = resolve_model("torchvision:resnet18")
    >>> model = build_model(spec=spec, seed=0)
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from strategies.base import Arguments, map_tensors

from conformance.core.errors import ConformanceError

__all__ = [
    "BIG_MODEL_PARAMS",
    "DEFAULT_INPUT_SHAPE",
    "QUICK_INPUT_SHAPES",
    "QUICK_ZOO",
    "TIMM_ZOO",
    "TORCHVISION_GROUPS",
    "ModelSpec",
    "build_model",
    "has_lazy_state",
    "materialise",
    "name_stem",
    "parse_input_shape",
    "resolve_model",
    "torchvision_group",
    "torchvision_names",
]

#: Models with more parameters than this (counted on the meta device) run only with ``--include-big``.
BIG_MODEL_PARAMS = 150_000_000
DEFAULT_INPUT_SHAPE = (2, 3, 224, 224)

#: The built-in default run: small models from both libraries, covering CNNs and a ViT. Listed
#: by their work in a run, the most first (``model_seconds`` in ``run.json``), as workers take
#: models in this order: the two last to finish are then small ones, and two workers end
#: within seconds of each other rather than one waiting for the ViT.
QUICK_ZOO = (
    "timm:vit_tiny_patch16_224",
    "timm:efficientnet_b0",
    "timm:resnet18",
    "timm:convnext_atto",
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
    "torchvision:squeezenet1_1",
)

#: The quick zoo's inputs where they differ from the model's own default: its convolutional
#: networks at 112x112, where each of their rows was measured to have the status and diagnosis
#: it has at 224 (docs/speed.md); the ViT keeps the 224 its position embedding is made for.
QUICK_INPUT_SHAPES = {reference: (2, 3, 112, 112) for reference in QUICK_ZOO if "vit_" not in reference}

#: Curated timm models, covering the main families.
TIMM_ZOO = (
    "resnet18", "resnet50", "seresnext26d_32x4d", "resnext26ts", "efficientnet_b0", "tf_efficientnetv2_b0",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "regnetx_002", "regnety_002",
    "regnetz_b16", "densenet121", "convnext_atto", "convnext_tiny", "vit_tiny_patch16_224",
    "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256", "eva02_tiny_patch14_224",
    "beit_base_patch16_224", "coatnet_nano_rw_224", "levit_128s", "mixer_s16_224", "cspdarknet53", "dla34",
    "dpn68", "ghostnet_100", "hrnet_w18_small", "inception_v3", "mobilevit_xxs", "poolformer_s12",
    "efficientformer_l1", "edgenext_xx_small", "repvgg_a0", "xception41", "fastvit_t8", "nfnet_l0",
    "caformer_s18", "tiny_vit_5m_224", "efficientvit_b0",
)

# torchvision models whose input must differ from DEFAULT_INPUT_SHAPE.
_TORCHVISION_INPUT_SIZE = {"inception_v3": 299}
_FAMILY_PREFIXES = ("wide_resnet",)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo, or a user's model, before it is built."""

    source: str  # "torchvision", "timm", "hf" or "user"
    name: str  # torchvision/timm model name, or the factory reference
    input_shape: tuple[int, ...]
    factory: Callable[[], nn.Module]
    tracer_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)  # the author's FX options (factory.tracer_kwargs)
    input_kind: str = "tensor"  # how the model takes its input: a key of INPUT_KINDS
    group: str = ""  # torchvision's model group (TORCHVISION_GROUPS)

    def inputs(self, *, seed: int, device: str) -> tuple[Any, Any]:
        """The previous input and the input: a fixed-seed sample of :attr:`input_kind` at
        :attr:`input_shape`, and its negation, so that a branch on the input's sign runs for
        one of them only."""
        generator = torch.Generator().manual_seed(seed)
        if self.input_kind == "tensor":
            current: Any = torch.randn(*self.input_shape, generator=generator)
        elif self.input_kind == "image_list":
            current = [torch.randn(*self.input_shape[1:], generator=generator) for _ in range(self.input_shape[0])]
        elif self.input_kind == "two_images":
            current = Arguments(torch.randn(*self.input_shape, generator=generator) for _ in range(2))
        else:
            raise ConformanceError(f"unknown input kind {self.input_kind!r} of {self.id}", hint=f"use one of {', '.join(INPUT_KINDS)}")
        previous = map_tensors(lambda t: (-t).to(device), current)
        return previous, map_tensors(lambda t: t.to(device), current)

    @property
    def id(self) -> str:
        return self.name if self.source == "user" else f"{self.source}:{self.name}"

    @property
    def family(self) -> str:
        """``user``; for timm, the timm model module (``vision_transformer``); for torchvision
        classifiers, the name's stem (``resnet``, ``wide_resnet``, ``efficientnet_v2``); for
        torchvision's other groups, the group and the module of the builder (``video.resnet``)."""
        if self.source == "user":
            return "user"
        if self.source == "hf":
            return self.group
        if self.source == "timm":
            import timm

            return timm.models.model_entrypoint(self.name).__module__.rpartition(".")[2]
        if self.group not in ("", "classification"):
            import torchvision

            return f"{self.group}.{torchvision.models.get_model_builder(self.name).__module__.rpartition('.')[2]}"
        return name_stem(self.name)

    @cached_property
    def param_count(self) -> int | None:
        """Parameters, counted on the meta device; ``None`` where the constructor cannot run there
        (it computes with tensors: RegNet, quantized models), whose count is the built model's."""
        try:
            with torch.device("meta"):
                model = self.factory()
        except (NotImplementedError, RuntimeError):
            return None
        return sum(p.numel() for p in model.parameters())

    @property
    def is_big(self) -> bool:
        """More parameters than :data:`BIG_MODEL_PARAMS`, as far as the meta device tells (:attr:`param_count`)."""
        return self.source != "user" and (self.param_count or 0) > BIG_MODEL_PARAMS


def name_stem(name: str) -> str:
    """The family part of a model name: ``resnet18`` -> ``resnet``, ``efficientnet_v2_s`` -> ``efficientnet_v2``."""
    for prefix in _FAMILY_PREFIXES:
        if name.startswith(prefix):
            return prefix
    match = re.match(r"[a-z]+(?:_?v\d+)?", name)
    return match.group(0) if match else name


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"2,3,224,224"`` -> ``(2, 3, 224, 224)``, with a clear error for anything else."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(size <= 0 for size in shape):
        raise ConformanceError(
            f"malformed input shape {text!r}", hint="give positive integers separated by commas, e.g. 2,3,224,224"
        )
    return shape


#: torchvision's model groups: the zoo ``torchvision-GROUP`` for each (``torchvision`` is ``classification``).
TORCHVISION_GROUPS = ("classification", "segmentation", "video", "quantization", "detection", "optical_flow")
# What a group's builders need so that nothing is downloaded, and what it is built as.
_GROUP_BUILD_OPTIONS = {
    "segmentation": {"weights_backbone": None},
    "detection": {"weights_backbone": None},
    "quantization": {"quantize": True},  # eager-mode int8, calibrated on torchvision's own random input
}
# Video clips (N, C, T, H, W): the smallest frames and size each family's pooling and positional embeddings accept.
_VIDEO_INPUT_SHAPE = {"r3d_18": (2, 3, 8, 112, 112), "mc3_18": (2, 3, 8, 112, 112), "r2plus1d_18": (2, 3, 8, 112, 112),
                      "s3d": (2, 3, 16, 224, 224), "mvit_v1_b": (2, 3, 16, 224, 224), "mvit_v2_s": (2, 3, 16, 224, 224),
                      "swin3d_t": (2, 3, 8, 224, 224), "swin3d_s": (2, 3, 8, 224, 224), "swin3d_b": (2, 3, 8, 224, 224)}
#: How a model takes its input (``ModelSpec.input_kind``), for the reports; ``input_shape`` gives the sizes.
INPUT_KINDS = {
    "tensor": "one tensor of input_shape",
    "image_list": "a list of input_shape[0] images of input_shape[1:] (torchvision's detection models)",
    "two_images": "two tensors of input_shape, as two positional arguments (RAFT)",
}
_GROUP_INPUT_KIND = {"detection": "image_list", "optical_flow": "two_images"}
_OPTICAL_FLOW_INPUT_SHAPE = (2, 3, 128, 128)  # RAFT wants sides divisible by 8
# Detection models that resize every image to min_size (800 by default): told to keep the input's 224.
_RESIZING_DETECTORS = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")


def torchvision_group(name: str) -> str:
    """The group of a torchvision model (``classification``, ``video``, ...)."""
    import torchvision

    for group in TORCHVISION_GROUPS:
        module = torchvision.models if group == "classification" else getattr(torchvision.models, group)
        if name in torchvision.models.list_models(module=module):
            return group
    raise _unknown_model(f"torchvision:{name}", [f"torchvision:{n}" for n in torchvision_names()])


def _torchvision_spec(name: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    import torchvision

    group = torchvision_group(name)
    size = _TORCHVISION_INPUT_SIZE.get(name)
    default = (_VIDEO_INPUT_SHAPE.get(name) or (_OPTICAL_FLOW_INPUT_SHAPE if group == "optical_flow" else None)
               or ((*DEFAULT_INPUT_SHAPE[:2], size, size) if size else DEFAULT_INPUT_SHAPE))
    options = dict(_GROUP_BUILD_OPTIONS.get(group, {}))
    if name.startswith(_RESIZING_DETECTORS):
        side = (input_shape or default)[-1]
        options.update(min_size=side, max_size=side)

    def factory() -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **options)

    return ModelSpec("torchvision", name, input_shape or default, factory, input_kind=_GROUP_INPUT_KIND.get(group, "tensor"), group=group)


def _timm_spec(name: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    import timm

    if not timm.is_model(name):
        raise _unknown_model(f"timm:{name}", [f"timm:{n}" for n in timm.list_models()])
    cfg_size = timm.get_pretrained_cfg(name).input_size if timm.get_pretrained_cfg(name) else None
    default = (DEFAULT_INPUT_SHAPE[0], *cfg_size) if cfg_size else DEFAULT_INPUT_SHAPE

    def factory() -> nn.Module:
        return timm.create_model(name, pretrained=False)

    return ModelSpec("timm", name, input_shape or default, factory)


def _hf_spec(name: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    """``hf:TYPE`` or ``hf:ClassName``: a small config of the type, random weights."""
    try:
        import transformers
    except ImportError:
        raise ConformanceError(f"hf:{name} needs transformers", hint="pip install 'feature-conformance[hf]'") from None
    import copy

    from conformance.zoo.hf import hf_input_shape, hf_model_types, small_config, vary_norms

    model_class = getattr(transformers, name, None) if name[:1].isupper() else None
    if name[:1].isupper() and not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise _unknown_model(f"hf:{name}", [f"hf:{n}" for n in dir(transformers) if n.endswith(("Model", "Backbone"))])
    model_type = model_class.config_class.model_type if model_class else name
    try:
        config = small_config(model_type)
    except ValueError:
        raise _unknown_model(f"hf:{model_type}", [f"hf:{n}" for n in hf_model_types()]) from None

    def factory() -> nn.Module:
        fresh = copy.deepcopy(config)
        model = model_class(fresh) if model_class else transformers.AutoModel.from_config(fresh)
        vary_norms(model)
        return model

    return ModelSpec("hf", name, input_shape or hf_input_shape(config), factory, group=model_type)


def _user_spec(reference: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    location, _, attribute = reference.rpartition(":")
    if not location or not attribute.isidentifier():
        raise ConformanceError(
            f"cannot read model reference {reference!r}",
            hint="use torchvision:NAME, timm:NAME, path/to/file.py:factory or package.module:factory",
        )
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ConformanceError(f"model file {location!r} does not exist", hint="check the path, relative to here")
        module_name = f"conformance_user_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConformanceError(f"importing {location!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise ConformanceError(
                f"cannot import module {location!r} ({exc})", hint="is the package installed, or on PYTHONPATH?"
            ) from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        public = [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])]
        raise ConformanceError(
            f"{location!r} has no callable {attribute!r}",
            hint=f"callables there: {', '.join(sorted(public)) or 'none'}",
        )
    shape = input_shape or tuple(getattr(factory, "input_shape", DEFAULT_INPUT_SHAPE))
    return ModelSpec("user", reference, shape, factory, _tracer_kwargs(reference, getattr(factory, "tracer_kwargs", {})))


#: The FX options a factory may give (``factory.tracer_kwargs``), as ``create_feature_extractor`` takes them.
TRACER_KWARGS = ("leaf_modules", "autowrap_functions", "autowrap_modules", "concrete_args")


def _tracer_kwargs(reference: str, options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping) or set(options) - set(TRACER_KWARGS):
        unknown = ", ".join(sorted(set(options) - set(TRACER_KWARGS))) if isinstance(options, Mapping) else type(options).__name__
        raise ConformanceError(f"{reference}: tracer_kwargs has {unknown}", hint=f"give a dict with some of {', '.join(TRACER_KWARGS)}")
    return dict(options)


def torchvision_names(group: str | None = None) -> list[str]:
    """torchvision's models of one group, or of every group."""
    import torchvision

    if group is None:
        return [name for each in TORCHVISION_GROUPS for name in torchvision_names(each)]
    module = torchvision.models if group == "classification" else getattr(torchvision.models, group)
    return list(torchvision.models.list_models(module=module))


def _unknown_model(reference: str, known: Iterable[str]) -> ConformanceError:
    import difflib

    close = difflib.get_close_matches(reference, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "'conformance list models' prints the zoo"
    return ConformanceError(f"unknown model {reference!r}", hint=hint)


def resolve_model(reference: str, *, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for ``torchvision:NAME``, ``timm:NAME``, ``file.py:factory`` or ``pkg.mod:factory``."""
    source, sep, name = reference.partition(":")
    if sep and source == "torchvision":
        return _torchvision_spec(name, input_shape)
    if sep and source == "timm":
        return _timm_spec(name, input_shape)
    if sep and source == "hf":
        return _hf_spec(name, input_shape)
    if not sep:
        raise ConformanceError(
            f"model {reference!r} names no source",
            hint=f"write torchvision:{reference} or timm:{reference}, or path/to/file.py:factory",
        )
    return _user_spec(reference, input_shape)


def build_model(*, spec: ModelSpec, seed: int) -> nn.Module:
    """Build the model with random weights from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    model = spec.factory()
    if not isinstance(model, nn.Module):
        raise ConformanceError(
            f"{spec.id} returned {type(model).__name__}, not an nn.Module",
            hint="the factory must return the model instance (torch.nn.Module)",
        )
    return model.eval()


def has_lazy_state(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters or buffers that its first call gives a shape (lazy modules)."""
    from torch.nn.parameter import is_lazy

    return any(is_lazy(tensor) for tensor in (*model.parameters(), *model.buffers()))


def _first_call_state(model: nn.Module) -> dict[str, Any]:
    """What a first call can set, by module: its attribute names and plain values, and each
    parameter's and buffer's shape, dtype, storage and version (bumped by an in-place write);
    the tensors themselves, not ``state_dict()``, which unpacks quantized weights anew each time."""
    from torch.nn.parameter import is_lazy

    state: dict[str, Any] = {}
    for name, module in model.named_modules():
        attributes = {key: value for key, value in vars(module).items()
                      if not key.startswith("_") and isinstance(value, (type(None), bool, int, float, str))}
        state[f"{name or 'the model'}: attributes"] = (sorted(vars(module)), attributes)
    for name, tensor in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        state[name] = "lazy" if is_lazy(tensor) else (tuple(tensor.shape), tensor.dtype, tensor.data_ptr(), tensor._version)
    return state


def materialise(model: nn.Module, x: Any) -> str:
    """One pass of ``x`` through ``model`` (its own mode, no gradients, the passes' random state),
    before any copy is made: lazy modules take their shapes and state a model sets on its first
    call is set, as the user's own first call would. Returns what the pass changed ("" where nothing)."""
    from strategies.base import call_model

    from conformance.core.rng import pass_rng

    lazy = [name for name, module in model.named_modules() if isinstance(module, nn.modules.lazy.LazyModuleMixin)
            and has_lazy_state(module)]
    before = _first_call_state(model)
    with torch.no_grad(), pass_rng():
        call_model(model, x)
    after = _first_call_state(model)
    changed = [key.removesuffix(": attributes") for key in after if before.get(key) != after[key]]
    changed = [key for key in changed if not any(key == name or key.startswith(f"{name}.") for name in lazy)]
    notes = []
    if lazy:
        notes.append(f"lazy modules materialised by one pass before copying: {', '.join(lazy[:5])}" + (f" and {len(lazy) - 5} more" if len(lazy) > 5 else ""))
    if changed:
        notes.append(f"state set by the model's first call, made by one pass before copying: {', '.join(changed[:5])}"
                     + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""))
    return "; ".join(notes)
