"""Golden manifests: renames paired, shapes and fingerprints compared; the committed manifest guards upgrades."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import pitfalls
from conformance.manifest import build_manifest, diff_manifests, load_manifest

COMMITTED = Path(__file__).parent.parent / "reports" / "manifests" / "quick.json"


@pytest.fixture(scope="module")
def manifest():
    return build_manifest([f"{pitfalls.__file__}:reused_module"])


def test_a_manifest_equals_itself_and_records_what_extraction_depends_on(manifest):
    assert diff_manifests(manifest, copy.deepcopy(manifest)) == []
    entry = next(iter(manifest["models"].values()))
    assert entry["modules"] and entry["fx_nodes"]["eval"] and "@children" in entry["layer_sets"]
    assert {"shape", "dtype", "sum", "norm"} <= set(next(iter(entry["layer_sets"]["@children"].values())))


def test_renames_are_paired_and_other_changes_listed(manifest):
    new = copy.deepcopy(manifest)
    entry = next(iter(new["models"].values()))
    nodes = entry["fx_nodes"]["eval"]
    renamed_from = nodes[1]
    nodes[1] = renamed_from + "_1"  # a renamed node
    nodes.append("brand_new_op")  # an added one
    layer, fingerprint = next(iter(entry["layer_sets"]["@children"].items()))
    fingerprint["sum"] += 1.0  # features changed
    second_layer = list(entry["layer_sets"]["@leaves"])[-1]
    entry["layer_sets"]["@leaves"][second_layer]["shape"] = [9, 9]
    changes = {(c["what"], c["change"], c["before"].split(" ")[0], c["after"].split(" ")[0]) for c in diff_manifests(manifest, new)}
    assert ("fx node (eval)", "renamed", renamed_from, renamed_from + "_1") in changes
    assert ("fx node (eval)", "added", "", "brand_new_op") in changes
    assert ("@children values", "changed", layer, layer) in changes
    assert ("@leaves shape", "changed", second_layer, second_layer) in changes
    assert len(changes) == 4


def test_a_tiny_difference_within_the_fingerprint_tolerance_is_not_a_change(manifest):
    new = copy.deepcopy(manifest)
    fingerprint = next(iter(next(iter(new["models"].values()))["layer_sets"]["@children"].values()))
    fingerprint["sum"] *= 1 + 1e-7
    assert diff_manifests(manifest, new) == []


@pytest.mark.zoo
def test_the_installed_versions_match_the_committed_manifest():
    """A dependency bump that renames nodes or changes features fails here, with the diff."""
    base = load_manifest(COMMITTED)
    changes = diff_manifests(base, build_manifest(list(base["models"]), seed=base["seed"]))
    assert not changes, "\n".join(f"{c['model']}: {c['what']} {c['change']}: {c['before']} -> {c['after']}" for c in changes[:40])
