"""Generated models: the suite's values verdict is the generator's own truth, for every strategy.

``pytest -m fuzz`` runs a small budget from a fixed seed (the same models on every machine);
``conformance fuzz --models 2000 --jobs 2`` is the long run published in ``reports/fuzz-cpu``.
"""

import json

import pytest
import torch
from hypothesis import HealthCheck, example, given, seed, settings

from conformance.cli import main
from conformance.running.fuzz import BLOCKS, REGRESSIONS, Block, Plan, judge, plans, true_values
from conformance.running.runner import evaluate


def _with_regressions(test):
    for plan, _, _ in REGRESSIONS:
        test = example(plan)(test)
    return test


@pytest.mark.fuzz
@seed(20261203)
@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@_with_regressions
@given(plans(max_blocks=5))
def test_the_values_verdict_is_the_generators_truth(plan):
    outcome = judge(plan)
    assert outcome.ok, f"{outcome.describe()}\n{plan.source()}"


def test_every_block_kind_builds_runs_and_is_judged():
    plan = Plan(tuple(Block(kind, 2.0, 0 if kind in ("reuse", "alias") else -1) for kind in BLOCKS if kind != "conv"))
    plan = Plan((Block("conv"), *plan.blocks[:]))
    plan = Plan(tuple(Block(b.kind, b.constant, 0) if b.kind in ("reuse", "alias") else b for b in plan.blocks))
    outcome = judge(plan)
    assert outcome.ok, outcome.describe()
    assert outcome.rows == len(plan.taps()) * 8


def test_the_generators_truth_is_independent_of_the_oracle_and_agrees_with_a_plain_hook():
    plan = Plan((Block("conv"), Block("relu_inplace"), Block("noise", 0.5), Block("pair"), Block("sequential")))
    model = plan.build()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    truth = true_values(plan, model, x)
    seen = {}
    for name in ("b0", "b1", "b3.conv", "b4.0"):
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.clone()))
    from conformance.core.rng import pass_rng

    with torch.no_grad(), pass_rng():
        model(x)
    for name, value in seen.items():
        torch.testing.assert_close(value, truth[name], msg=name)


def test_negative_control_a_planted_wrong_verdict_is_a_disagreement(monkeypatch):
    from conformance.judging import checks
    from conformance.judging.context import CheckResult

    real = checks.check_values

    def always_pass(ctx):  # a check that cannot fail
        return [CheckResult("values", row.layer, "pass") for row in real(ctx)]

    monkeypatch.setitem(checks.CHECKS, "values", always_pass)
    outcome = judge(Plan((Block("conv"), Block("relu_inplace"))), strategies=["hooks"])
    assert any("the suite says pass" in text and "says wrong" in text for text in outcome.disagreements), outcome.describe()


def test_negative_control_a_diagnosis_the_plan_did_not_plant_is_misnamed(monkeypatch):
    from conformance.judging import diagnoses

    monkeypatch.setattr(diagnoses, "MECHANISMS", (lambda ctx, layer, value: ("reused_module", "planted"),))
    outcome = judge(Plan((Block("conv"), Block("relu_inplace"))), strategies=["hooks"])
    assert outcome.misnamed and "reused_module" in outcome.misnamed[0]


def test_negative_control_an_unexplained_failure_is_reported(monkeypatch):
    from conformance.judging import diagnoses

    monkeypatch.setattr(diagnoses, "MECHANISMS", ())
    outcome = judge(Plan((Block("conv"), Block("relu_inplace"))), strategies=["hooks"])
    assert outcome.unexplained and not outcome.ok


def test_regressions_print_as_python_that_builds_the_same_model():
    for plan, _, _ in REGRESSIONS:
        namespace = {"torch": torch, "nn": torch.nn}
        exec(plan.source(), namespace)
        torch.manual_seed(0)
        rebuilt = namespace["Generated"]()
        assert [name for name, _ in rebuilt.named_modules(remove_duplicate=False)] == [
            name for name, _ in plan.build().named_modules(remove_duplicate=False)]


@pytest.mark.fuzz
def test_fuzz_command_writes_the_summary_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "fuzz"
    assert main(["fuzz", "--models", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == 3 and summary["disagreements"] == summary["crashes"] == summary["unexplained"] == 0
    assert len(summary["found_and_fixed"]) == len(REGRESSIONS)
    assert "| 3 |" in (out / "README.md").read_text()
    assert main(["fuzz", "--models", "3", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == json.dumps(summary, indent=2) + "\n"  # nothing already written is lost


def test_a_generated_model_runs_under_evaluate_like_a_users_model():
    plan = Plan((Block("lazy"), Block("forward_call")))
    rows = evaluate(plan.build(), layers=plan.taps(), strategies=["hooks+clone"], checks=["values"], input_shape=(2, 3, 6, 6))
    assert set(rows.status) <= {"pass", "fail"} and "call_bypassed" in set(rows.diagnosis)
