"""Diffs on constructed results with known differences; baselines and exit codes through the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from conformance.evidence.diff import Side, diff, parse_fail_on
from conformance.core.errors import ConformanceError
from test_cli import PITFALLS, conformance


def _cell(strategy, layer, check, status, err=math.nan, model="m", scale=1.0):
    return {"model": model, "family": "f", "strategy": strategy, "layer": layer, "check": check, "status": status,
            "diagnosis": "" if status == "pass" else "inplace_aliasing", "detail": "", "max_abs_err": err, "scale": scale}


def _cost(strategy, metric, value, low, high):
    return {"model": "m", "layers": "a", "strategy": strategy, "metric": metric, "status": "ok", "value": value, "ci_low": low, "ci_high": high}


MACHINE = {"machine_info": {"cpu": "X", "cpu_count": 2, "torch_threads": 2, "gpu": None}, "versions": {"torch": "2.14.1"}}
BASE = Side(
    pd.DataFrame([_cell("hooks", "a", "values", "pass", 0.0), _cell("fx", "a", "values", "pass", 1e-7), _cell("fx", "a", "shape", "pass"),
                  _cell("ilg", "a", "values", "fail"), _cell("stash", "a", "values", "pass"), _cell("timm", "a", "values", "pass", 0.0)]),
    pd.DataFrame([_cost("fx", "overhead", 0.40, 0.39, 0.41), _cost("hooks", "overhead", 1.00, 0.95, 1.05), _cost("ilg", "overhead", 0.40, 0.39, 0.41)]),
    MACHINE,
)
NEW = Side(
    pd.DataFrame([_cell("hooks", "a", "values", "fail"), _cell("fx", "a", "values", "pass", 1e-2), _cell("fx", "a", "shape", "fail"),
                  _cell("ilg", "a", "values", "pass"), _cell("timm", "a", "values", "pass", 0.0), _cell("timm", "b", "values", "fail")]),
    pd.DataFrame([_cost("fx", "overhead", 0.50, 0.49, 0.51), _cost("hooks", "overhead", 1.12, 1.0, 1.25), _cost("ilg", "overhead", 0.41, 0.40, 0.42)]),
    MACHINE,
)


def test_every_kind_of_change_is_found_and_only_regressions_count():
    result = diff(BASE, NEW, fail_on=[parse_fail_on("overhead:10%")])
    kinds = {(row.kind, row.strategy, row.layer): row.regression for row in result.changes.itertuples()}
    assert kinds == {
        ("regressed", "hooks", "a"): True,
        ("shape_or_dtype", "fx", "a"): True,
        ("new_failure", "timm", "b"): True,
        ("cost", "fx", "a"): True,  # +25 %, intervals apart
        ("cost", "hooks", "a"): False,  # +12 %, but inside the noise
        ("drift", "fx", "a"): False,
        ("fixed", "ilg", "a"): False,
        ("only_in_base", "stash", "a"): False,
    }  # ilg's +2.5 % stays under the 10 % limit: no row
    assert list(result.changes["regression"][:4]) == [True] * 4  # regressions come first
    assert result.warnings == []


def test_drift_is_judged_against_the_scale_of_the_feature():
    """The same growth of the error is drift on a feature of RMS 1 and float noise on one of RMS 1000."""
    base = Side(pd.DataFrame([_cell("fx", "small", "values", "pass", 0.0), _cell("fx", "large", "values", "pass", 0.0, scale=1000.0),
                              _cell("fx", "tiny", "values", "pass", 0.0)]), pd.DataFrame(), MACHINE)
    new = Side(pd.DataFrame([_cell("fx", "small", "values", "pass", 5e-3), _cell("fx", "large", "values", "pass", 5e-3, scale=1000.0),
                             _cell("fx", "tiny", "values", "pass", 5e-5)]), pd.DataFrame(), MACHINE)
    drifted = diff(base, new).changes
    assert list(drifted["layer"]) == ["small"] and drifted["kind"].tolist() == ["drift"]
    assert "grew by 0.005 of the feature's scale" in drifted["detail"][0]


def test_a_failing_cell_whose_cause_changed_is_a_diagnosis_change():
    base = Side(pd.DataFrame([_cell("ilg", "a", "values", "fail"), _cell("ilg", "b", "values", "fail")]), pd.DataFrame(), MACHINE)
    moved = pd.DataFrame([_cell("ilg", "a", "values", "fail"), {**_cell("ilg", "b", "values", "fail"), "diagnosis": "children_not_chained"}])
    result = diff(base, Side(moved, pd.DataFrame(), MACHINE))
    assert result.changes[["kind", "layer", "base", "new"]].values.tolist() == [["diagnosis", "b", "inplace_aliasing", "children_not_chained"]]
    assert result.regressions.empty
    # control: the same causes are no change
    assert diff(base, Side(base.results.copy(), pd.DataFrame(), MACHINE)).changes.empty


def test_costs_from_another_machine_are_listed_but_never_counted():
    """fx's +25 % overhead, intervals apart, is a regression on one machine, not across two."""
    elsewhere = Side(NEW.results, NEW.bench, {**MACHINE, "machine_info": {**MACHINE["machine_info"], "cpu": "Y"}})
    costs = diff(BASE, elsewhere, fail_on=[parse_fail_on("overhead:10%")]).changes.query("kind == 'cost'")
    assert set(costs["strategy"]) == {"fx", "hooks"} and not costs["regression"].any()
    assert "different machines: not counted" in costs.set_index("strategy").loc["fx", "detail"]


def test_results_without_a_scale_are_not_judged_for_drift_and_say_so():
    old = Side(BASE.results.drop(columns="scale").reindex(columns=BASE.results.columns), BASE.bench, MACHINE)
    result = diff(old, NEW)
    assert "drift" not in set(result.changes["kind"])
    assert any("BASE records no feature scale" in warning for warning in result.warnings)


def test_same_side_is_no_change_and_other_machines_are_a_warning():
    assert diff(BASE, BASE).changes.empty
    other = Side(BASE.results, BASE.bench, {"machine_info": {**MACHINE["machine_info"], "cpu": "Y"}, "versions": {"torch": "2.9.1"}})
    result = diff(BASE, other)
    assert result.changes.empty and len(result.warnings) == 2
    assert "different machines (cpu X -> Y)" in result.warnings[0] and "torch 2.14.1 -> 2.9.1" in result.warnings[1]


@pytest.mark.parametrize("text", ["overhead", "overhead:ten%", "speed:10%"])
def test_bad_thresholds_name_the_grammar(text):
    with pytest.raises(ConformanceError, match="fail-on"):
        parse_fail_on(text)


def test_absolute_thresholds():
    assert parse_fail_on("peak_memory:1048576").exceeded(0, 2_000_000) and not parse_fail_on("peak_memory:1048576").exceeded(0, 1_000_000)


def test_baseline_and_diff_through_the_cli(tmp_path):
    run = tmp_path / "run"
    assert conformance("run", "--model", f"{PITFALLS}:inplace_after_tap", "--layers", "bn", "head", "--strategies", "hooks+clone", "fx",
                       "--checks", "values", "--out", str(run)).returncode == 0
    saved = conformance("baseline", "save", str(run), "--out", str(tmp_path / "base.json"))
    assert saved.returncode == 0, saved.stderr
    same = conformance("diff", str(tmp_path / "base.json"), str(run))
    assert same.returncode == 0 and "0 regression(s)" in same.stdout
    assert conformance("baseline", "save", str(run), "--out", str(tmp_path / "base.json.gz")).returncode == 0
    compressed = conformance("diff", str(tmp_path / "base.json.gz"), str(tmp_path / "base.json"))
    assert compressed.returncode == 0 and "no change" in compressed.stdout
    rows = pd.read_csv(run / "results.csv", keep_default_na=False)
    rows.loc[(rows["strategy"] == "hooks+clone") & (rows["layer"] == "bn"), "status"] = "fail"  # a planted regression
    rows.to_csv(run / "results.csv", index=False)
    changed = conformance("diff", str(tmp_path / "base.json"), str(run), "--markdown", str(tmp_path / "diff.md"))
    assert changed.returncode == 1 and "regressed" in changed.stdout
    text = (tmp_path / "diff.md").read_text()
    assert "**1 regression(s)**" in text and "| regressed | tests" in text.replace(PITFALLS, "tests")
    bad = conformance("diff", str(tmp_path / "base.json"), str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "no results or baseline" in bad.stderr
    bad_threshold = conformance("diff", str(tmp_path / "base.json"), str(run), "--fail-on", "speed:10%")
    assert bad_threshold.returncode == 2 and "no bench metric 'speed'" in bad_threshold.stderr


def test_shards_cover_the_models_once_and_merge_into_one_run(tmp_path):
    models = ["inplace_after_tap", "reused_module", "plain"]
    common = [arg for name in models for arg in ("--model", f"{PITFALLS}:{name}")] + ["--layers", "@children", "--strategies", "hooks", "--checks", "values", "--jobs", "1"]
    for k in (1, 2):
        result = conformance("run", *common, "--shard", f"{k}/2", "--out", str(tmp_path / f"shard{k}"))
        assert result.returncode == 0, result.stderr
    shard_models = [set(pd.read_csv(tmp_path / f"shard{k}" / "results.csv")["model"]) for k in (1, 2)]
    assert not shard_models[0] & shard_models[1] and len(shard_models[0] | shard_models[1]) == 3
    merged = conformance("merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "all"))
    assert merged.returncode == 0, merged.stderr
    assert pd.read_csv(tmp_path / "all" / "results.csv")["model"].nunique() == 3
    twice = conformance("merge", str(tmp_path / "shard1"), str(tmp_path / "shard1"), "--out", str(tmp_path / "twice"))
    assert twice.returncode == 2 and "two runs hold the cell" in twice.stderr

    document = json.loads((tmp_path / "shard2" / "run.json").read_text())
    document["versions"]["torch"] = "2.9.1"
    (tmp_path / "shard2" / "run.json").write_text(json.dumps(document))
    mixed = conformance("merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "mixed"))
    assert mixed.returncode == 2 and "differ in package versions" in mixed.stderr
    assert conformance("merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "mixed"), "--force").returncode == 0
    bad = conformance("run", *common, "--shard", "3/2", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "K/N" in bad.stderr


def test_jobs_run_the_models_in_processes_and_give_the_rows_of_a_serial_run(tmp_path):
    common = [arg for name in ("plain", "reused_module", "inplace_after_tap") for arg in ("--model", f"{PITFALLS}:{name}")]
    common += ["--strategies", "hooks", "fx", "--checks", "fast"]
    assert conformance("run", *common, "--jobs", "1", "--out", str(tmp_path / "serial")).returncode == 0
    parallel = conformance("run", *common, "--jobs", "2", "--out", str(tmp_path / "parallel"), subprocess_=True)
    assert parallel.returncode == 0, parallel.stderr
    key = ["model", "strategy", "layer", "check", "status", "diagnosis"]
    serial_rows, parallel_rows = (pd.read_csv(tmp_path / d / "results.csv", keep_default_na=False)[key] for d in ("serial", "parallel"))
    assert sorted(map(tuple, serial_rows.values)) == sorted(map(tuple, parallel_rows.values))
    assert serial_rows.values.tolist() == parallel_rows.values.tolist()  # written in the serial run's order
    assert (tmp_path / "parallel" / "summary.md").exists()
    threads = json.loads((tmp_path / "parallel" / "run.json").read_text())["executor"]["task_threads"]
    assert f"executor processes: 2 worker processes, {threads} torch threads each" in parallel.stderr
