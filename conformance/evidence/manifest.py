"""Golden manifests: what a model looks like to feature extraction, under the pinned versions.

A manifest records, per model: module paths, FX node names (``get_graph_node_names`` in
train and eval), timm ``feature_info`` (module, channels, reduction), the layers of each
layer set, and a fingerprint of every feature at a fixed seed (:mod:`.fingerprints`: shape,
dtype, sum, norm and a sketch judged against the feature's scale). It also records the
versions and the machine it was taken on. It is one JSON text file, reviewed in pull
requests; :func:`diff_manifests` lists what an upgrade changed, with removed and added names
paired into likely renames, and leaves out value differences within float noise.

Example::

    >>> save_manifest(references=["torchvision:resnet18"], out=Path("manifests/quick.json"))
    >>> diff_manifests(load_manifest("manifests/quick.json"), build_manifest(["torchvision:resnet18"])).changes
    []
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from conformance.core.environment import environment_changes, run_metadata
from conformance.core.errors import ConformanceError
from conformance.evidence.fingerprints import NOISE_BOUND, compare_fingerprints, fingerprint
from conformance.truth.layers import LAYER_SETS, resolve_layers
from conformance.truth.oracle import capture
from conformance.evidence.results import read_document, write_document
from conformance.zoo.specs import build_model, resolve_model

__all__ = ["ManifestDiff", "build_manifest", "diff_manifests", "load_manifest", "save_manifest"]

FORMAT = "feature-conformance-manifest/2"


def _node_names(model: torch.nn.Module) -> dict[str, list[str] | str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        train, evaluation = get_graph_node_names(model)
    except Exception as exc:  # a model FX cannot trace: that is a fact worth recording
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"train": train, "eval": evaluation}


def _model_manifest(reference: str, *, seed: int) -> dict:
    spec = resolve_model(reference)
    model = build_model(spec=spec, seed=seed)
    info = getattr(model, "feature_info", None)
    layer_sets = {layer_set: resolve_layers(model, spec, [layer_set]) for layer_set in LAYER_SETS}
    x = torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(seed))
    truth = capture(model, x, layers=list(dict.fromkeys(layer for layers in layer_sets.values() for layer in layers)))
    ran = {layer for layer, record in truth.layers.items() if record.calls}
    return {
        "input_shape": list(spec.input_shape),
        "modules": [name for name, _ in model.named_modules() if name],
        "fx_nodes": _node_names(model),
        "feature_info": [{"module": i["module"], "channels": i["num_chs"], "reduction": i["reduction"]} for i in info] if info else None,
        "layer_sets": {layer_set: [layer for layer in layers if layer in ran] for layer_set, layers in layer_sets.items()},
        "features": {layer: fingerprint(record.value) for layer, record in truth.layers.items() if record.calls},
    }


def build_manifest(references: Sequence[str], *, seed: int = 0) -> dict:
    """The manifest of each model, with the versions and machine it was taken on."""
    metadata = run_metadata(device="cpu", command=[], seed=seed, threads=torch.get_num_threads())
    return {"format": FORMAT, "seed": seed, "versions": metadata["versions"], "machine_info": metadata["machine_info"],
            "models": {reference: _model_manifest(reference, seed=seed) for reference in references}}


def save_manifest(*, references: Sequence[str], out: Path, seed: int = 0) -> dict:
    """Build the manifest of ``references`` and write it to ``out`` (gzip when it ends in ``.gz``)."""
    manifest = build_manifest(references, seed=seed)
    write_document(out, manifest, sort_keys=True)
    return manifest


def load_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = read_document(path)
    except (OSError, ValueError) as exc:
        raise ConformanceError(f"cannot read manifest {path} ({exc})", hint="give a file written by 'conformance manifest save'") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        hint = ("it was written by an earlier version: write it again with 'conformance manifest save'" if str(found).startswith("feature-conformance-manifest/")
                else "give a file written by 'conformance manifest save'")
        raise ConformanceError(f"{path} is not a {FORMAT} manifest (format: {found})", hint=hint)
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


def _change(model: str, what: str, change: str, before: str, after: str, detail: str = "") -> dict:
    return {"model": model, "what": what, "change": change, "before": before, "after": after, "detail": detail}


def _names_diff(model: str, what: str, before: list[str], after: list[str]) -> list[dict]:
    removed = [n for n in before if n not in set(after)]
    added = [n for n in after if n not in set(before)]
    renames, removed, added = _paired(removed, added)
    return ([_change(model, what, "renamed", a, b) for a, b in renames]
            + [_change(model, what, "removed", a, "") for a in removed]
            + [_change(model, what, "added", "", b) for b in added])


def _described(layer: str, entry: dict) -> str:
    if "sum" not in entry:
        return f"{layer} {entry.get('type')}"
    return f"{layer} sum {entry['sum']:.6g} norm {entry['norm']:.6g}"


@dataclass
class ManifestDiff:
    """What changed between two manifests, and how far every feature that is not bitwise the
    same moved, in units of the noise bound (at most 1: float noise, not a change)."""

    changes: list[dict]  # model, what, change, before, after, detail
    deviations: list[tuple[str, str, float]] = field(default_factory=list)  # (model, layer, deviation / bound)
    notes: list[str] = field(default_factory=list)  # how the versions and machines of the two sides differ

    @property
    def within_noise(self) -> list[tuple[str, str, float]]:
        return [item for item in self.deviations if item[2] <= 1.0]


def _feature_changes(model: str, before: dict, after: dict, deviations: list[tuple[str, str, float]]) -> list[dict]:
    changes = []
    for layer in [name for name in before if name in after]:
        x, y = before[layer], after[layer]
        if (x.get("shape"), x.get("dtype"), x.get("type")) != (y.get("shape"), y.get("dtype"), y.get("type")):
            changes.append(_change(model, "shape", "changed", f"{layer} {x.get('shape', x.get('type'))} {x.get('dtype', '')}".strip(),
                                   f"{layer} {y.get('shape', y.get('type'))} {y.get('dtype', '')}".strip()))
        elif "sketch" in x and x != y:
            deviation = compare_fingerprints(x, y)
            deviations.append((model, layer, deviation.ratio))
            if deviation.changed:
                changes.append(_change(model, "values", "changed", _described(layer, x), _described(layer, y), deviation.describe()))
    return changes


def diff_manifests(base: dict, new: dict) -> ManifestDiff:
    """Every difference between two manifests: names renamed, removed or added, shapes and
    values changed beyond float noise, feature_info changed, models on one side only."""
    changes: list[dict] = []
    deviations: list[tuple[str, str, float]] = []
    for model in sorted(set(base["models"]) | set(new["models"])):
        if model not in new["models"] or model not in base["models"]:
            changes.append(_change(model, "model", "removed" if model not in new["models"] else "added", "", ""))
            continue
        a, b = base["models"][model], new["models"][model]
        changes += _names_diff(model, "module", a["modules"], b["modules"])
        for mode in ("train", "eval"):
            changes += _names_diff(model, f"fx node ({mode})", a["fx_nodes"].get(mode, []), b["fx_nodes"].get(mode, []))
        if a["fx_nodes"].get("error") != b["fx_nodes"].get("error"):
            changes.append(_change(model, "fx tracing", "changed", a["fx_nodes"].get("error", "traces"), b["fx_nodes"].get("error", "traces")))
        if a["feature_info"] != b["feature_info"]:
            changes.append(_change(model, "feature_info", "changed", json.dumps(a["feature_info"]), json.dumps(b["feature_info"])))
        for layer_set in sorted(set(a["layer_sets"]) | set(b["layer_sets"])):
            changes += _names_diff(model, f"{layer_set} layers", a["layer_sets"].get(layer_set, []), b["layer_sets"].get(layer_set, []))
        changes += _feature_changes(model, a["features"], b["features"], deviations)
    result = ManifestDiff(changes, deviations)
    result.notes = _notes(base, new, changes, result.within_noise)
    return result


def _notes(base: dict, new: dict, changes: list[dict], within_noise: list[tuple[str, str, float]]) -> list[str]:
    """What the reader needs to weigh the changes: versions, machines, and the noise left out."""
    machine, versions = environment_changes(base, new)
    notes = []
    if versions:
        notes.append("versions: " + ", ".join(f"{key} {a} -> {b}" for key, (a, b) in versions.items()))
    if machine:
        notes.append("machines: " + ", ".join(f"{key} {a} -> {b}" for key, (a, b) in machine.items()))
    if within_noise:
        largest = max(ratio for _, _, ratio in within_noise)
        notes.append(f"{len(within_noise)} feature(s) differ within float noise (largest {largest:.2g}x the bound {NOISE_BOUND:g}): not listed")
    if machine and any(change["what"] == "values" for change in changes):
        notes.append("every value change listed exceeds the noise measured across CPUs and thread counts: it would show on one machine too")
    return notes
