"""Golden manifests: renames paired, shapes and fingerprints compared against float noise;
the committed manifest guards upgrades and holds on other machines."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import pitfalls
from conformance.evidence.fingerprints import SKETCH_BLOCK, compare_fingerprints, fingerprint
from conformance.truth.layers import LAYER_SETS, resolve_layers
from conformance.evidence.manifest import build_manifest, diff_manifests, load_manifest
from conformance.evidence.noise import SIMULATED_MACHINES, manifest_on
from conformance.truth.oracle import capture
from conformance.zoo.specs import QUICK_ZOO, build_model, resolve_model
from test_cli import conformance

COMMITTED = Path(__file__).parent.parent / "reports" / "manifests" / "quick.json"
PITFALL_MODEL = f"{pitfalls.__file__}:reused_module"


def _rms(value: torch.Tensor) -> float:
    return value.double().norm().item() / math.sqrt(value.numel())


def _planted(value: torch.Tensor, *, index: int, relative: float) -> torch.Tensor:
    """``value`` with one element moved by ``relative`` times the feature's RMS."""
    changed = value.clone(memory_format=torch.contiguous_format)
    changed.view(-1)[index] += relative * _rms(value)
    return changed


@pytest.fixture(scope="module")
def manifest():
    return build_manifest([PITFALL_MODEL])


@pytest.fixture(scope="module")
def quick_features():
    """Every feature a quick-zoo manifest fingerprints (979 tensors, 160M elements)."""
    features = []
    for reference in QUICK_ZOO:
        spec = resolve_model(reference)
        model = build_model(spec=spec, seed=0)
        layers = list(dict.fromkeys(layer for layer_set in LAYER_SETS for layer in resolve_layers(model, spec, [layer_set])))
        truth = capture(model, torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(0)), layers=layers)
        features += [(reference, layer, record.value) for layer, record in truth.layers.items()
                     if record.calls and isinstance(record.value, torch.Tensor) and _rms(record.value) > 0]
    return features


def test_a_manifest_equals_itself_and_records_what_extraction_depends_on(manifest):
    result = diff_manifests(manifest, copy.deepcopy(manifest))
    assert result.changes == [] and result.deviations == [] and result.notes == []
    entry = next(iter(manifest["models"].values()))
    assert entry["modules"] and entry["fx_nodes"]["eval"] and entry["layer_sets"]["@children"]
    assert {"shape", "dtype", "sum", "norm", "sketch"} <= set(entry["features"][entry["layer_sets"]["@children"][0]])
    assert {"cpu", "cpu_capability", "torch_threads"} <= set(manifest["machine_info"])


def test_renames_are_paired_and_other_changes_listed(manifest):
    new = copy.deepcopy(manifest)
    entry = next(iter(new["models"].values()))
    nodes = entry["fx_nodes"]["eval"]
    renamed_from = nodes[1]
    nodes[1] = renamed_from + "_1"  # a renamed node
    nodes.append("brand_new_op")  # an added one
    layer = entry["layer_sets"]["@children"][0]
    entry["features"][layer] = fingerprint(torch.ones(entry["features"][layer]["shape"]))  # features changed
    reshaped = entry["layer_sets"]["@leaves"][-1]
    entry["features"][reshaped]["shape"] = [9, 9]
    changes = {(c["what"], c["change"], c["before"].split(" ")[0], c["after"].split(" ")[0]) for c in diff_manifests(manifest, new).changes}
    assert changes == {
        ("fx node (eval)", "renamed", renamed_from, renamed_from + "_1"),
        ("fx node (eval)", "added", "", "brand_new_op"),
        ("values", "changed", layer, layer),
        ("shape", "changed", reshaped, reshaped),
    }


def test_an_old_manifest_is_refused_with_the_command_that_writes_it_again(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "feature-conformance-manifest/1", "models": {}}))
    result = conformance("manifest", "diff", str(old))
    assert result.returncode == 2 and "earlier version" in result.stderr and "manifest save" in result.stderr


@pytest.mark.zoo
def test_one_element_moved_by_1e_3_of_the_scale_is_caught_in_every_quick_feature(quick_features):
    """Wherever it lies, in each of the 979 features: the block holding it names the change."""
    generator = torch.Generator().manual_seed(0)
    for reference, layer, value in quick_features:
        before = fingerprint(value)
        for index in (int(torch.randint(value.numel(), (1,), generator=generator)), value.numel() - 1):
            deviation = compare_fingerprints(before, fingerprint(_planted(value, index=index, relative=1e-3)))
            assert deviation.changed, f"{reference} {layer}: element {index} moved by 1e-3 rms gives {deviation.describe()}"
            assert deviation.where.startswith(f"block {index // SKETCH_BLOCK + 1} of"), deviation.where


@pytest.mark.zoo
def test_noise_like_changes_are_not_changes_and_a_uniform_1e_4_scaling_is(quick_features):
    """Independent noise of 4e-6 rms per element (the largest RMS noise measured across the
    simulated machines: ATen's scalar kernels) is within the bound in every feature; a scaling
    of a whole feature by 1 + 1e-4 is not."""
    generator = torch.Generator().manual_seed(1)
    for reference, layer, value in quick_features:
        before = fingerprint(value)
        noisy = value.double() + 4e-6 * _rms(value) * torch.randn(value.shape, generator=generator, dtype=torch.float64)
        assert not compare_fingerprints(before, fingerprint(noisy.float())).changed, f"{reference} {layer}"
        assert compare_fingerprints(before, fingerprint((value.double() * (1 + 1e-4)).float())).changed, f"{reference} {layer}"


def test_the_planted_change_is_reported_by_manifest_diff(tmp_path, manifest):
    """Through the command line: one element of one feature moved by 1e-3 of its RMS."""
    spec = resolve_model(PITFALL_MODEL)
    model = build_model(spec=spec, seed=0)
    layer = manifest["models"][PITFALL_MODEL]["layer_sets"]["@leaves"][0]
    truth = capture(model, torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(0)), layers=[layer])
    planted = copy.deepcopy(manifest)
    planted["models"][PITFALL_MODEL]["features"][layer] = fingerprint(_planted(truth.layers[layer].value, index=3, relative=1e-3))
    for name, document in (("base.json", manifest), ("new.json", planted)):
        (tmp_path / name).write_text(json.dumps(document))
    result = conformance("manifest", "diff", str(tmp_path / "base.json"), str(tmp_path / "new.json"))
    assert result.returncode == 1 and f"{layer} sum" in result.stdout and "block 1 of" in result.stdout
    assert "1 difference(s)" in result.stdout


@pytest.mark.zoo
def test_the_installed_versions_match_the_committed_manifest():
    """A dependency bump that renames nodes or changes features fails here, with the diff."""
    base = load_manifest(COMMITTED)
    changes = diff_manifests(base, build_manifest(list(base["models"]), seed=base["seed"])).changes
    assert not changes, "\n".join(f"{c['model']}: {c['what']} {c['change']}: {c['before']} -> {c['after']} {c['detail']}" for c in changes[:40])


@pytest.mark.zoo
@pytest.mark.parametrize("machine", [m for m in SIMULATED_MACHINES if m.name in ("an AVX2 CPU, 1 thread", "ATen scalar kernels")], ids=lambda m: m.name)
def test_the_committed_manifest_holds_on_another_cpu_and_thread_count(tmp_path, machine):
    """Taken again with other kernels and threads (a CPU without AVX-512; no SIMD at all), the
    quick zoo's features differ from the committed ones only within float noise."""
    base = load_manifest(COMMITTED)
    result = diff_manifests(base, manifest_on(machine, references=list(base["models"]), seed=base["seed"], out=tmp_path / "other.json"))
    assert result.changes == [], result.changes[:10]
    assert max((ratio for _, _, ratio in result.deviations), default=0.0) <= 1.0

