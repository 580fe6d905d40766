"""In a project's own test suite: the pytest plugin on the example project, assert_conforms, and
[tool.conformance] read by the plugin and the CLI (flags override; a bad key is a clear error)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pitfalls
from conformance import assert_conforms
from test_cli import PITFALLS, conformance

EXAMPLE = Path(__file__).parent.parent / "examples" / "project"


@pytest.fixture
def project(tmp_path):
    """A copy of the example project, to plant faults in."""
    copy = tmp_path / "project"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "runs"))
    return copy


def pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess:
    # the hang guard is no speed target: on 2 idle cores the example takes about 10 s
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfExXs", *args], cwd=project,
                          capture_output=True, text=True, timeout=900)


def outcomes(result: subprocess.CompletedProcess) -> dict[str, int]:
    last = result.stdout.strip().splitlines()[-1]
    return {kind: int(count) for count, kind in re.findall(r"(\d+) (passed|failed|xfailed|xpassed|skipped|errors?)", last)}


def test_the_example_project_runs_its_conformance_items_with_the_accepted_failure_as_xfail(project):
    result = pytest_in(project, "-v")
    assert result.returncode == 0, result.stdout[-3000:]
    # 2 tests of its own; 2 strategies x (3 layers x 3 per-layer checks + keys) = 20 items: one accepted failure,
    # and hooks' gradients on bn skipped, as its values are wrong
    assert outcomes(result) == {"passed": 20, "xfailed": 1, "skipped": 1}, result.stdout[-3000:]
    assert "pyproject.toml::tinynet.py:build::hooks+clone::values[bn] PASSED" in result.stdout
    xfail = [line for line in result.stdout.splitlines() if line.startswith("XFAIL")]
    assert xfail == [xfail[0]] and "hooks::values[bn]" in xfail[0] and "inplace_aliasing" in xfail[0], xfail


def test_the_example_project_runs_in_two_processes(project):
    pytest.importorskip("xdist")
    result = pytest_in(project, "-n", "2")
    assert result.returncode == 0, result.stdout[-3000:]
    assert outcomes(result) == {"passed": 20, "xfailed": 1, "skipped": 1}, result.stdout[-3000:]


def test_the_items_collect_under_strict_markers_without_xdist(project):
    result = pytest_in(project, "pyproject.toml", "-p", "no:xdist", "--strict-markers")
    assert result.returncode == 0 and outcomes(result) == {"passed": 18, "xfailed": 1, "skipped": 1}, result.stdout[-3000:]


def test_a_planted_regression_fails_with_the_row_and_the_command_that_reproduces_it(project):
    model = project / "tinynet.py"
    model.write_text(model.read_text().replace("x = self.block(x)\n", "x = self.block(x)\n        x = x.mul_(2.0)  # planted\n"))
    result = pytest_in(project, "pyproject.toml", "-k", "values or gradients")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "FAILED pyproject.toml::tinynet.py:build::hooks::values[block]" in result.stdout
    for line in (r"status\s+fail\n", r"diagnosis\s+inplace_aliasing\n", r"detail\s+equals the output after a later in-place op overwrote it",
                 r"max abs err\s+[0-9.]+ \(scale [0-9.]+\)",
                 r"reproduce: conformance run --model tinynet.py:build --strategies hooks --layers block --checks values --input-shape 2,3,16,16"):
        assert re.search(line, result.stdout), (line, result.stdout[-4000:])
    assert "hooks+clone::values[block] PASSED" not in result.stdout  # -v not given; the clone is not what failed
    assert "FAILED pyproject.toml::tinynet.py:build::hooks+clone::values" not in result.stdout


def test_an_accepted_failure_that_passes_or_changes_diagnosis_fails(project):
    config = project / "pyproject.toml"
    text = config.read_text()
    config.write_text(text.replace('layer = "bn"', 'layer = "head"'))  # accepted where it passes: strict xfail
    result = pytest_in(project, "pyproject.toml", "-k", "hooks and values")
    assert "[XPASS(strict)] accepted in [tool.conformance] as inplace_aliasing, and it passes now" in result.stdout, result.stdout[-3000:]
    config.write_text(text.replace('diagnosis = "inplace_aliasing"', 'diagnosis = "stale"'))
    result = pytest_in(project, "pyproject.toml", "-k", "hooks and values")
    assert "accepted in [tool.conformance] as stale, but it is fail: inplace_aliasing" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 1


def test_a_cell_the_baseline_saw_pass_fails_when_it_no_longer_passes(tmp_path):
    config = (f'[tool.pytest.ini_options]\n\n[tool.conformance]\nmodels = ["{PITFALLS}:plain"]\nlayers = ["first"]\n'
              'strategies = ["timm"]\nchecks = ["values"]\ninput-shape = "2,3,8,8"\n')
    (tmp_path / "pyproject.toml").write_text(config)
    assert pytest_in(tmp_path, "pyproject.toml").stdout.count("SKIPPED") == 1  # the control: not a timm model, no baseline
    assert conformance("run", "--out", "runs/base", cwd=tmp_path).returncode == 0
    assert conformance("baseline", "save", "runs/base", "--out", "base.json", cwd=tmp_path).returncode == 0
    planted = tmp_path / "base.json"
    planted.write_text(planted.read_text().replace('"unsupported"', '"pass"', 1))  # the baseline saw it pass
    (tmp_path / "pyproject.toml").write_text(config + 'baseline = "base.json"\n')
    result = pytest_in(tmp_path, "pyproject.toml")
    assert result.returncode == 1 and "regressed against the baseline: regressed: pass -> unsupported" in result.stdout, result.stdout[-3000:]


def test_a_bad_key_in_tool_conformance_is_a_clear_error_for_pytest_and_the_cli(project):
    config = project / "pyproject.toml"
    config.write_text(config.read_text().replace("strategies =", "strategy ="))
    result = pytest_in(project)
    assert result.returncode == 4 and "unknown key 'strategy' in [tool.conformance]" in result.stderr + result.stdout
    assert "did you mean 'strategies'?" in result.stderr + result.stdout
    cli = conformance("run", cwd=project)
    assert cli.returncode == 2 and "unknown key 'strategy'" in cli.stderr
    config.write_text(config.read_text().replace("strategy =", "strategies =").replace('seed = 0\n', '').replace('input-shape = "2,3,16,16"', "input-shape = 2"))
    cli = conformance("run", cwd=project)
    assert cli.returncode == 2 and "input-shape = 2" in cli.stderr and "must be" in cli.stderr


def test_the_cli_reads_tool_conformance_and_its_flags_override_it(project):
    run = conformance("run", "--out", "runs/a", cwd=project)
    assert run.returncode == 0, run.stderr[-2000:]
    import pandas as pd

    rows = pd.read_csv(project / "runs" / "a" / "results.csv")
    assert set(rows["strategy"]) == {"hooks", "hooks+clone"} and set(rows["check"]) == {"values", "shape", "keys", "gradients"}
    override = conformance("run", "--out", "runs/b", "--strategies", "fx", "--checks", "values", cwd=project)
    assert override.returncode == 0, override.stderr[-2000:]
    rows = pd.read_csv(project / "runs" / "b" / "results.csv")
    assert set(rows["strategy"]) == {"fx"} and set(rows["check"]) == {"values"} and set(rows["model"]) == {"tinynet.py:build"}


def test_assert_conforms_passes_a_conforming_strategy_and_shows_the_table_for_one_that_is_not():
    rows = assert_conforms(pitfalls.InplaceAfterTap(), layers=["bn", "head"], strategy="hooks+clone", input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["status"] == "pass").all()
    with pytest.raises(AssertionError) as failure:
        assert_conforms(pitfalls.InplaceAfterTap(), layers=["bn", "head"], strategy="hooks", checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    message = str(failure.value)
    assert "hooks does not conform on InplaceAfterTap: 1 of 2 rows" in message and "inplace_aliasing" in message
    assert torch.is_grad_enabled()


def test_assert_conforms_names_an_unknown_check():
    from conformance.core.errors import ConformanceError

    with pytest.raises(ConformanceError, match="unknown check 'valeus'"):
        assert_conforms(pitfalls.Plain(), layers=["first"], strategy="hooks", checks=["valeus"], input_shape=pitfalls.INPUT_SHAPE)


def test_without_tool_conformance_the_plugin_adds_nothing(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    result = pytest_in(tmp_path)
    assert result.returncode == 0 and outcomes(result) == {"passed": 1}, result.stdout


def test_pitfalls_file_models_work_in_the_configuration(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.pytest.ini_options]\n\n[tool.conformance]\nmodels = ["{PITFALLS}:reused_module"]\nlayers = ["act"]\n'
        'strategies = ["fx", "hooks"]\nchecks = ["values"]\ninput-shape = "2,3,8,8"\n')
    result = pytest_in(tmp_path, "-v")
    assert outcomes(result) == {"passed": 1, "failed": 1}, result.stdout[-3000:]
    assert re.search(r"diagnosis\s+reused_module\n", result.stdout) and "matches call 1 of 2" in result.stdout
