"""Golden manifests: what a model looks like to feature extraction, under the pinned versions.

A manifest records, per model: module paths, FX node names (``get_graph_node_names`` in
train and eval), timm ``feature_info`` (module, channels, reduction), the feature shapes of
each layer set, and a fingerprint of the feature values (sum and norm in float64 at a fixed
seed). It is a small JSON text file, reviewed in pull requests; :func:`diff_manifests` lists
what an upgrade changed, with removed and added names paired into likely renames.

Example::

    >>> save_manifest(references=["torchvision:resnet18"], out=Path("manifests/quick.json"))
    >>> diff_manifests(load_manifest("manifests/quick.json"), build_manifest(["torchvision:resnet18"]))
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .environment import run_metadata
from .errors import ConformanceError
from .layers import LAYER_SETS, resolve_layers
from .oracle import capture
from .zoo import build_model, resolve_model

__all__ = ["build_manifest", "diff_manifests", "load_manifest", "save_manifest"]

FORMAT = "feature-conformance-manifest/1"
FINGERPRINT_RTOL = 1e-4  # float64 sums of float32 features: CPUs differ in the last bits


def _node_names(model: torch.nn.Module) -> dict[str, list[str] | str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        train, evaluation = get_graph_node_names(model)
    except Exception as exc:  # a model FX cannot trace: that is a fact worth recording
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"train": train, "eval": evaluation}


def _fingerprint(value: Any) -> dict:
    if not isinstance(value, torch.Tensor):
        return {"type": type(value).__name__}
    as_double = value.detach().double()
    return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
            "sum": float(as_double.sum()), "norm": float(as_double.norm())}


def _model_manifest(reference: str, *, seed: int) -> dict:
    spec = resolve_model(reference)
    model = build_model(spec=spec, seed=seed)
    info = getattr(model, "feature_info", None)
    entry: dict[str, Any] = {
        "input_shape": list(spec.input_shape),
        "modules": [name for name, _ in model.named_modules() if name],
        "fx_nodes": _node_names(model),
        "feature_info": [{"module": i["module"], "channels": i["num_chs"], "reduction": i["reduction"]} for i in info] if info else None,
        "layer_sets": {},
    }
    x = torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(seed))
    for layer_set in LAYER_SETS:
        layers = resolve_layers(model, spec, [layer_set])
        truth = capture(model, x, layers=layers)
        entry["layer_sets"][layer_set] = {layer: _fingerprint(truth.layers[layer].value) for layer in layers if truth.layers[layer].calls}
    return entry


def build_manifest(references: Sequence[str], *, seed: int = 0) -> dict:
    """The manifest of each model, with the versions it was taken under."""
    versions = run_metadata(device="cpu", command=[], seed=seed, threads=torch.get_num_threads())["versions"]
    return {"format": FORMAT, "seed": seed, "versions": versions,
            "models": {reference: _model_manifest(reference, seed=seed) for reference in references}}


def save_manifest(*, references: Sequence[str], out: Path, seed: int = 0) -> dict:
    manifest = build_manifest(references, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def load_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConformanceError(f"cannot read manifest {path} ({exc})", hint="give a file written by 'conformance manifest save'") from None
    if manifest.get("format") != FORMAT:
        raise ConformanceError(f"{path} is not a manifest", hint="give a file written by 'conformance manifest save'")
    return manifest


def _paired(removed: list[str], added: list[str]) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Likely renames (most similar names first), and what is left unpaired."""
    candidates = sorted(((difflib.SequenceMatcher(None, a, b).ratio(), a, b) for a in removed for b in added), reverse=True)
    renames, left, right = [], set(removed), set(added)
    for score, a, b in candidates:
        if score >= 0.6 and a in left and b in right:
            renames.append((a, b))
            left.discard(a)
            right.discard(b)
    return renames, [a for a in removed if a in left], [b for b in added if b in right]


def _names_diff(model: str, what: str, before: list[str], after: list[str]) -> list[dict]:
    removed = [n for n in before if n not in set(after)]
    added = [n for n in after if n not in set(before)]
    renames, removed, added = _paired(removed, added)
    return ([{"model": model, "what": what, "change": "renamed", "before": a, "after": b} for a, b in renames]
            + [{"model": model, "what": what, "change": "removed", "before": a, "after": ""} for a in removed]
            + [{"model": model, "what": what, "change": "added", "before": "", "after": b} for b in added])


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= FINGERPRINT_RTOL * max(abs(a), abs(b), 1e-12)


def diff_manifests(base: dict, new: dict) -> list[dict]:
    """Every difference between two manifests: names renamed, removed or added, shapes and
    fingerprints changed, feature_info changed, models on one side only."""
    changes: list[dict] = []
    for model in sorted(set(base["models"]) | set(new["models"])):
        if model not in new["models"] or model not in base["models"]:
            side = "removed" if model not in new["models"] else "added"
            changes.append({"model": model, "what": "model", "change": side, "before": "", "after": ""})
            continue
        a, b = base["models"][model], new["models"][model]
        changes += _names_diff(model, "module", a["modules"], b["modules"])
        for mode in ("train", "eval"):
            changes += _names_diff(model, f"fx node ({mode})", a["fx_nodes"].get(mode, []), b["fx_nodes"].get(mode, []))
        if a["fx_nodes"].get("error") != b["fx_nodes"].get("error"):
            changes.append({"model": model, "what": "fx tracing", "change": "changed", "before": a["fx_nodes"].get("error", "traces"), "after": b["fx_nodes"].get("error", "traces")})
        if a["feature_info"] != b["feature_info"]:
            changes.append({"model": model, "what": "feature_info", "change": "changed", "before": json.dumps(a["feature_info"]), "after": json.dumps(b["feature_info"])})
        for layer_set in sorted(set(a["layer_sets"]) | set(b["layer_sets"])):
            before, after = a["layer_sets"].get(layer_set, {}), b["layer_sets"].get(layer_set, {})
            changes += _names_diff(model, f"{layer_set} layers", list(before), list(after))
            for layer in set(before) & set(after):
                x, y = before[layer], after[layer]
                if (x.get("shape"), x.get("dtype")) != (y.get("shape"), y.get("dtype")):
                    changes.append({"model": model, "what": f"{layer_set} shape", "change": "changed", "before": f"{layer} {x.get('shape')} {x.get('dtype')}", "after": f"{layer} {y.get('shape')} {y.get('dtype')}"})
                elif "sum" in x and not (_close(x["sum"], y["sum"]) and _close(x["norm"], y["norm"])):
                    changes.append({"model": model, "what": f"{layer_set} values", "change": "changed", "before": f"{layer} sum {x['sum']:.6g} norm {x['norm']:.6g}", "after": f"{layer} sum {y['sum']:.6g} norm {y['norm']:.6g}"})
    return changes
