"""The command line: bad input gives a message, a hint and exit 2; runs write, resume and summarise."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PITFALLS = str(Path(__file__).parent / "pitfalls.py")
COSTLY = str(Path(__file__).parent / "costly.py")


def conformance(*args: str, cwd: Path | None = None, timeout: float = 300, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """The command's exit code and output, from ``main`` in this process (torch is imported once).

    ``subprocess_=True`` runs ``python -m conformance`` instead, where the test needs a process of its
    own (worker pools, Ray, a traceback on the real stderr); ``timeout`` guards that against a hang.
    """
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "conformance", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    import torch

    from conformance.cli import main

    stdout, stderr, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["conformance", *args], code, stdout.getvalue(), stderr.getvalue())


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--model", "torchvision:resnet181"], "unknown model 'torchvision:resnet181'"),
        (["run", "--model", "resnet18"], "names no source"),
        (["run", "--model", "missing/file.py:build"], "does not exist"),
        (["run", "--model", f"{PITFALLS}:nope"], "has no callable 'nope'"),
        (["run", "--model", f"{PITFALLS}:not_a_module"], "not an nn.Module"),
        (["run", "--model", "no_such_package.models:build"], "cannot import module"),
        (["run", "--model", f"{PITFALLS}:plain", "--layers", "frist"], "has no module or node 'frist'"),
        (["run", "--model", f"{PITFALLS}:plain", "--layers", "@everything"], "unknown layer set"),
        (["run", "--model", f"{PITFALLS}:plain", "--strategies", "hook"], "unknown strategy 'hook'"),
        (["run", "--model", f"{PITFALLS}:plain", "--checks", "valeus"], "unknown check 'valeus'"),
        (["run", "--model", f"{PITFALLS}:plain", "--input-shape", "2,3,x"], "malformed input shape"),
        (["run", "--model", f"{PITFALLS}:plain", "--device", "tpu"], "unknown device"),
        (["run", "--model", f"{PITFALLS}:plain", "--jobs", "0"], "--jobs 0 is not a positive number"),
        (["list", "layers"], "needs a model"),
        (["bench", "--model", f"{PITFALLS}:plain", "--max-time", "0"], "--max-time 0 is not positive"),
        (["bench", "--model", f"{PITFALLS}:plain", "--layers", "first", "--layers", "frist"], "has no module or node 'frist'"),
        (["bench", "--model", f"{PITFALLS}:plain", "--strategies", "hook"], "unknown strategy 'hook'"),
        (["bench", "--model", f"{PITFALLS}:plain", "--device", "tpu"], "unknown device"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    result = conformance(*args, "--out", str(tmp_path / "out")) if args[0] in ("run", "bench") else conformance(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "hint:" in result.stderr or args[0] == "list"  # an exception escaping main fails the test here
    assert not (tmp_path / "out" / "results.csv").exists() and not (tmp_path / "out" / "bench.csv").exists()


def test_bad_input_through_the_console_script_exits_2_without_a_traceback(tmp_path):
    result = conformance("run", "--model", "torchvision:resnet181", "--out", str(tmp_path / "out"), subprocess_=True)
    assert result.returncode == 2 and "unknown model 'torchvision:resnet181'" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_console_script_ends_without_teardown_yet_with_its_code_and_all_its_output():
    """``command`` (the console script) leaves by ``os._exit``: its exit code is still the
    command's, and what it printed into a pipe (block-buffered) all arrives."""
    from strategies import list_strategies

    def console(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from conformance.__main__ import command; command()", *args],
                              capture_output=True, text=True, timeout=300)

    listing = console("list", "strategies")
    assert listing.returncode == 0 and listing.stdout.splitlines()[-1].startswith(list_strategies()[-1])
    assert len(listing.stdout.splitlines()) == len(list_strategies())
    bad = console("list", "widgets")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_unknown_layer_suggests_close_names(tmp_path):
    result = conformance("run", "--model", f"{PITFALLS}:plain", "--layers", "secnod", "--out", str(tmp_path))
    assert "did you mean second" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_says_so(tmp_path):
    result = conformance("run", "--model", f"{PITFALLS}:plain", "--device", "cuda", "--out", str(tmp_path))
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


def test_run_writes_tidy_rows_metadata_and_summary(tmp_path):
    out = tmp_path / "run"
    result = conformance("run", "--model", f"{PITFALLS}:inplace_after_tap", "--layers", "bn", "head", "--strategies", "hooks", "hooks+clone", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    for column in ("model", "strategy", "layer", "check", "status", "diagnosis", "detail", "max_abs_err", "run_id", "device"):
        assert column in rows.columns
    assert set(rows["status"]) <= {"pass", "fail", "error", "unsupported", "skipped"}
    aliasing = rows.query("strategy == 'hooks' and layer == 'bn' and check == 'values'").iloc[0]
    assert (aliasing.status, aliasing.diagnosis) == ("fail", "inplace_aliasing")
    document = json.loads((out / "results.json").read_text())
    assert len(document["rows"]) == len(rows)
    for key in ("datetime", "command", "versions", "machine_info", "commit_info", "timings", "strategy_seconds"):
        assert key in document
    assert set(document["strategy_seconds"]) == {"hooks", "hooks+clone"}
    assert 0 < sum(document["strategy_seconds"].values()) <= document["timings"]["total"]
    assert "wall time of each strategy's units: " in result.stdout
    assert {"python", "torch", "torchvision", "timm", "torchextractor"} <= set(document["versions"])
    assert "hooks+clone" in (out / "summary.md").read_text() and "hooks+clone" in result.stdout


def test_existing_results_are_kept_and_a_run_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", f"{PITFALLS}:plain", "--model", f"{PITFALLS}:reused_module", "--layers", "@children", "--strategies", "hooks", "fx", "--jobs", "1", "--out", str(out)]
    assert conformance(*args).returncode == 0
    complete = (out / "results.csv").read_text()

    again = conformance(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (out / "results.csv").read_text() == complete

    # Simulate a run killed while writing its last unit: a short last line.
    lines = complete.splitlines()
    last_unit = lines[-1].split(",")[1:4:2]
    (out / "results.csv").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:15] + "\n")
    resumed = conformance(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    before, after = pd.read_csv(pd.io.common.StringIO(complete)), pd.read_csv(out / "results.csv")
    key = ["model", "strategy", "layer", "check", "status"]
    assert sorted(map(tuple, before[key].values)) == sorted(map(tuple, after[key].values)), last_unit
    assert after["run_id"].nunique() == 1


def test_redo_runs_again_the_units_a_query_selects_and_keeps_the_others(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", f"{PITFALLS}:reused_module", "--layers", "@children", "--strategies", "hooks", "fx", "--checks", "values", "--out", str(out)]
    assert conformance(*args).returncode == 0
    first = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert set(first.query("status == 'fail'")["strategy"]) == {"fx"}
    # mark the fx unit as if an older suite had left it unexplained; the hooks unit as done long ago
    planted = first.assign(diagnosis=first["diagnosis"].where(first["strategy"] != "fx", "unexplained"),
                           run_id=first["run_id"].where(first["strategy"] != "hooks", "kept"))
    planted.to_csv(out / "results.csv", index=False)
    redone = conformance(*args, "--resume", "--redo", "diagnosis == 'unexplained'")
    assert redone.returncode == 0, redone.stderr
    after = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert (after.query("strategy == 'hooks'")["run_id"] == "kept").all()  # not run again
    assert "unexplained" not in set(after["diagnosis"]) and len(after) == len(first)
    assert after.query("strategy == 'fx' and status == 'fail'")["diagnosis"].eq("reused_module").all()
    # run.json names this invocation and keeps the one that wrote the rows before it
    metadata = json.loads((out / "run.json").read_text())
    assert metadata["redo"] == "diagnosis == 'unexplained'" and "--redo" in metadata["command"]
    assert [earlier["command"][-2:] for earlier in metadata["earlier"]] == [["--out", str(out)]]
    assert metadata["earlier"][0]["redo"] is None and "commit_info" in metadata["earlier"][0]


@pytest.mark.parametrize("extra, message", [(["--redo", "status == 'fail'"], "pass --resume"),
                                            (["--resume", "--redo", "status ==="], "is no query of the results")])
def test_bad_redo_is_a_clear_error_and_the_results_stay(tmp_path, extra, message):
    out = tmp_path / "run"
    args = ["run", "--model", f"{PITFALLS}:plain", "--layers", "@children", "--strategies", "hooks", "--checks", "values", "--out", str(out)]
    assert conformance(*args).returncode == 0
    before = (out / "results.csv").read_text()
    result = conformance(*[a for a in args if a != "--overwrite"], *extra)
    assert result.returncode == 2 and message in result.stderr
    assert (out / "results.csv").read_text() == before


def test_list_commands():
    models = conformance("list", "models", "--zoo", "all").stdout.split()
    assert "torchvision:resnet18" in models and "timm:convnext_tiny" in models and len(models) >= 80 + 25
    strategies = conformance("list", "strategies").stdout
    for name in ("stash", "hooks", "ilg", "torchextractor", "timm", "fx"):
        assert f"{name} " in strategies
    layers = conformance("list", "layers", "torchvision:resnet18").stdout
    assert "@stages: layer1 layer2 layer3 layer4" in layers and "@children: conv1 bn1 relu maxpool" in layers


def test_checks_take_profiles_and_the_matrix_reads_the_run(tmp_path):
    out = tmp_path / "run"
    result = conformance("run", "--model", f"{PITFALLS}:inplace_after_tap", "--layers", "bn", "head", "--strategies", "hooks+clone", "fx",
                         "--checks", "fast", "set_independence", "--out", str(out))
    assert result.returncode == 0, result.stderr
    checks = list(dict.fromkeys(pd.read_csv(out / "results.csv")["check"]))
    from conformance.judging.profiles import PROFILES

    assert checks == [*PROFILES["fast"], "set_independence"]
    matrix = conformance("matrix", str(out))
    assert matrix.returncode == 0, matrix.stderr
    line = next(line for line in matrix.stdout.splitlines() if line.startswith("set_independence"))
    assert line.split()[1:] == ["1/1", "pass", "0/1", "pass", "(1", "fail)"]
    cell = conformance("matrix", str(out), "--strategy", "fx", "--check", "set_independence")
    assert "depends_on_request" in cell.stdout and "bn" in cell.stdout
    unknown = conformance("matrix", str(out), "--strategy", "fxx", "--check", "values")
    assert unknown.returncode == 2 and "no strategy 'fxx'" in unknown.stderr


def test_bench_writes_cost_rows_next_to_a_conformance_run(tmp_path):
    from conformance.evidence.results import BENCH_COLUMNS, SAMPLE_COLUMNS

    out = tmp_path / "run"
    assert conformance("run", "--model", f"{COSTLY}:tower", "--layers", "blocks.3", "--strategies", "hooks", "--checks", "values", "--out", str(out)).returncode == 0
    args = ["bench", "--model", f"{COSTLY}:tower", "--layers", "blocks.3", "--layers", "blocks.3", "head", "--strategies", "hooks", "fx", "timm",
            "--max-time", "1", "--out", str(out)]
    result = conformance(*args)
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(out / "bench.csv", keep_default_na=False)
    assert tuple(rows.columns) == BENCH_COLUMNS and tuple(pd.read_csv(out / "bench_samples.csv").columns) == SAMPLE_COLUMNS
    assert list(dict.fromkeys(rows["layers"])) == ["blocks.3", "blocks.3 head"]
    assert set(rows.query("strategy == 'fx' and status == 'ok'")["metric"]) == {
        "latency", "overhead", "floor_ratio", "rank", "build_time", "peak_memory", "retained_memory", "params_retained"}
    assert dict(rows.drop_duplicates("metric").set_index("metric")["unit"]) == {
        "latency": "s", "overhead": "ratio", "floor_ratio": "ratio", "rank": "rank", "build_time": "s",
        "peak_memory": "bytes", "retained_memory": "bytes", "params_retained": "ratio"}
    assert set(rows.query("strategy == 'timm'")["status"]) == {"unsupported"}
    document = json.loads((out / "bench.json").read_text())
    assert len(document["rows"]) == len(rows) and document["machine_info"]["torch_threads"] >= 1
    assert {"commit_info", "versions", "datetime", "bench"} <= set(document)
    assert "floor_ratio [95% CI]" in result.stdout and "(floor)" in result.stdout and "timm: unsupported" in result.stdout
    assert (out / "results.csv").exists()

    bench_csv = (out / "bench.csv").read_text()
    again = conformance(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "bench.csv").read_text() == bench_csv
