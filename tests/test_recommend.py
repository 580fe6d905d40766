"""Recommendations: eligible strategies pass every required check, cheapest first; the rest say why."""

from __future__ import annotations

import math

import pandas as pd

from conformance.evidence.recommend import recommend
from test_cli import PITFALLS, conformance


def _row(strategy, check, status, layer="a", diagnosis=""):
    return {"model": "m", "strategy": strategy, "layer": layer, "check": check, "status": status, "diagnosis": diagnosis, "detail": ""}


def _cost(strategy, overhead, low, high):
    return {"model": "m", "layers": "a", "strategy": strategy, "metric": "overhead", "status": "ok", "value": overhead, "ci_low": low, "ci_high": high}


RESULTS = pd.DataFrame([
    _row("cheap", "values", "pass"), _row("cheap", "gradients", "pass"),
    _row("twin", "values", "pass"), _row("twin", "gradients", "pass"), _row("twin", "deepcopy", "fail", layer="*"),
    _row("dear", "values", "pass"), _row("dear", "gradients", "pass"),
    _row("wrong", "values", "fail", diagnosis="inplace_aliasing"), _row("wrong", "gradients", "pass"),
    _row("detached", "values", "pass"), _row("detached", "gradients", "fail", diagnosis="detached"),
    _row("elsewhere", "values", "pass"), _row("elsewhere", "values", "fail", layer="b"), _row("elsewhere", "gradients", "pass"),
])
COSTS = pd.DataFrame([_cost("dear", 1.5, 1.4, 1.6), _cost("cheap", 0.40, 0.38, 0.42), _cost("twin", 0.41, 0.39, 0.43),
                      _cost("wrong", 0.1, 0.09, 0.11), _cost("detached", 0.2, 0.19, 0.21)])


def test_eligible_strategies_come_cheapest_first_and_ties_share_a_rank():
    eligible, excluded = recommend(RESULTS, COSTS, model="m", layers=["a"], needs=["gradients"])
    assert list(eligible["strategy"]) == ["cheap", "twin", "dear", "elsewhere"]  # a failure on another layer does not count
    assert list(eligible["rank"]) == [1, 1, 3, 4]
    assert eligible.set_index("strategy").loc["twin", "also fails"] == "deepcopy"
    assert math.isnan(eligible.set_index("strategy").loc["elsewhere", "overhead"])  # not benched: last
    why = dict(zip(excluded["strategy"], excluded["why"]))
    assert why == {"wrong": "values: fail on a (inplace_aliasing)", "detached": "gradients: fail on a (detached)"}


def test_a_check_not_measured_excludes():
    eligible, excluded = recommend(RESULTS, COSTS, model="m", layers=["a"], needs=["train_mode"])
    assert eligible.empty and set(excluded["why"].str.contains("train_mode: not measured")) == {True}


def test_recommend_measures_a_user_model_then_reads_the_results_back(tmp_path):
    args = ["recommend", "--model", f"{PITFALLS}:inplace_after_tap", "--layers", "bn", "head", "--need", "gradients",
            "--strategies", "hooks", "hooks+clone", "stash+clone", "--max-time", "1"]
    measured = conformance(*args, "--out", str(tmp_path / "rec"))
    assert measured.returncode == 0, measured.stderr
    lines = measured.stdout.splitlines()
    assert lines[2].split()[:2] == ["rank", "strategy"] and lines[3].split()[:2] == ["1", "hooks+clone"]
    assert "hooks: values: fail on bn (inplace_aliasing)" in measured.stdout
    assert "stash+clone: gradients: fail on bn, head (detached)" in measured.stdout
    again = conformance(*args, "--results", str(tmp_path / "rec"))
    assert again.returncode == 0 and again.stdout.splitlines()[:4] == lines[:4]
    missing = conformance(*args[:3], "--model", f"{PITFALLS}:plain", "--layers", "first", "--results", str(tmp_path / "rec"))
    assert missing.returncode == 2 and "holds no results" in missing.stderr
