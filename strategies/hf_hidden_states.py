"""``hf-hidden-states``: ``model(pixel_values, output_hidden_states=True).hidden_states``.

What users of Hugging Face ``transformers`` write: ``hidden_states[0]`` is taken as the output of
the embeddings, ``hidden_states[i]`` as the output of the encoder's ``i``-th layer (``i`` from 1),
and ``last_hidden_state`` as the output of the final norm where the model has one. The adapter
maps a requested module to its index by that reading of the model's structure:

* the embeddings: the first child named ``embeddings``/``embedder`` of the model (or of its
  ``vision_model``);
* the encoder's layers: the ``nn.ModuleList`` child of its ``encoder`` (or of the child whose
  class is an ``...Encoder``: DINOv3's ``model``; ``layer``, ``layers``, ``stages``, ``block``; not
  the ``patch_embeddings`` list before PoolFormer's blocks), or of the model itself where it has
  no encoder (ViT in transformers 5), one hidden state per element after the embeddings';
* the final norm: a child ``layernorm``, ``layer_norm``, ``post_layernorm`` or ``norm`` after the
  encoder (or the layers), answered with ``last_hidden_state``.

Whether ``hidden_states[i]`` really is that module's output is what the checks measure, per model
type; the adapter does not assume it is right, it does what users do. Any other module cannot be
requested.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .base import Arguments, Extraction, Extractor, Strategy, Tap, Unsupported, module_outputs, repeated_modules

__all__ = ["HfHiddenStates", "hidden_state_modules", "read_as"]

_EMBEDDINGS = ("embeddings", "embedder")
_FINAL_NORMS = ("layernorm", "layer_norm", "post_layernorm", "norm")


def _base(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's own transformer, where it sits inside (CLIP-style ``vision_model``)."""
    inner = getattr(model, "vision_model", None)
    return ("vision_model.", inner) if isinstance(inner, nn.Module) else ("", model)


def hidden_state_modules(model: nn.Module) -> tuple[dict[str, int], str | None]:
    """``{module path: hidden_states index}`` as users read it, and the path of the final norm
    that ``last_hidden_state`` stands for (``None`` where there is none)."""
    prefix, base = _base(model)
    children = dict(base.named_children())
    indices: dict[str, int] = {}
    embeddings = next((name for name in children if name in _EMBEDDINGS), None)
    if embeddings:
        indices[f"{prefix}{embeddings}"] = 0
    encoder_name = "encoder" if "encoder" in children else next(
        (name for name, child in children.items() if type(child).__name__.endswith("Encoder")), None)
    encoder = children.get(encoder_name) if encoder_name else None
    container = (f"{prefix}{encoder_name}.", encoder) if encoder is not None else (prefix, base)
    lists = [(name, child) for name, child in container[1].named_children() if isinstance(child, nn.ModuleList)]
    # the stages, not the patch embeddings before each (PoolFormer's, PVT's and GLPN's encoder.patch_embeddings)
    layers = next((item for item in lists if "embed" not in item[0]), lists[0] if lists else None)
    if layers:
        for index, stage in enumerate(layers[1]):
            # a stage that is itself a list of blocks never runs as a module: its last block's output stands for it
            last = f".{len(stage) - 1}" if isinstance(stage, nn.ModuleList) and len(stage) else ""
            indices[f"{container[0]}{layers[0]}.{index}{last}"] = index + 1
    names = list(children)
    last = encoder_name if encoder is not None else layers[0] if layers else None
    after = names[names.index(last) + 1:] if last in children else []
    final = next((name for name in after if name in _FINAL_NORMS), None)
    return indices, (f"{prefix}{final}" if final else None)


def read_as(path: str) -> str | None:
    """What users read as the output of the module at ``path``, for a path that
    :func:`hidden_state_modules` maps: ``hidden_states[0]`` (the embeddings), ``hidden_states[i]``
    (the encoder's ``i - 1``-th layer) or ``last_hidden_state`` (the final norm); else None."""
    numbers = [part for part in path.split(".") if part.isdigit()]  # the stage's index: encoder.layer.3, encoder.block.2.0
    if numbers:
        return f"hidden_states[{int(numbers[0]) + 1}]"
    last = path.rpartition(".")[2]
    return "hidden_states[0]" if last in _EMBEDDINGS else "last_hidden_state" if last in _FINAL_NORMS else None


class _HiddenStatesExtractor(Extractor):
    def __init__(self, model: nn.Module, wanted: Mapping[str, int | None]) -> None:
        self.module = model
        self.wanted = wanted  # requested name -> hidden_states index, None for last_hidden_state

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        output = module(*x, output_hidden_states=True) if isinstance(x, Arguments) else module(x, output_hidden_states=True)
        hidden = output.get("hidden_states") if hasattr(output, "get") else None
        if hidden is None and any(index is not None for index in self.wanted.values()):
            fields = ", ".join(key for key in output.keys() if "hidden_states" in key) if hasattr(output, "keys") else type(output).__name__
            raise Unsupported(f"{type(output).__name__} holds no hidden_states" + (f" (it has {fields})" if fields else ""))
        beyond = {name: index for name, index in self.wanted.items() if index is not None and index >= len(hidden)}
        if beyond:
            raise Unsupported(f"hidden_states has {len(hidden)} entries, fewer than the embeddings and the layers it is read for",
                              layers=list(beyond), reasons={name: f"hidden_states has {len(hidden)} entries: {name} would be hidden_states[{index}]"
                                                            for name, index in beyond.items()})
        features = {name: output["last_hidden_state"] if index is None else hidden[index] for name, index in self.wanted.items()}
        return Extraction(features=features, output=output)


class HfHiddenStates(Strategy):
    """``model(x, output_hidden_states=True)``: ``hidden_states[i]`` and ``last_hidden_state``."""

    def refusal(self, model: nn.Module) -> str | None:
        if not hasattr(getattr(model, "config", None), "output_hidden_states"):
            return "not a Hugging Face transformers model: output_hidden_states is a transformers model's option"
        return None

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        self.refuse(model)
        modules = module_outputs(layers, seen_by="hidden_states")
        indices, final = hidden_state_modules(model)
        known = {**indices, **({final: None} if final else {})}
        refused = [name for name, path in modules.items() if path not in known]
        if refused:
            listed = ", ".join(list(known)[:6]) + (" ..." if len(known) > 6 else "")
            raise Unsupported(f"hidden_states holds the embeddings' and the encoder layers' outputs, last_hidden_state the final norm's: {listed or 'none found'}",
                              layers=refused)
        if repeated_modules(modules):
            raise Unsupported("hidden_states holds one output per layer", layers=repeated_modules(modules))
        return _HiddenStatesExtractor(model, {name: known[path] for name, path in modules.items()})
