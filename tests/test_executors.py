"""The executors run the same units as a serial run and write the same rows, in the same order."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conformance.cli import _jobs, _may_use_processes, _parser
from conformance.core.errors import ConformanceError
from conformance.running.executors import make_executor

from test_cli import PITFALLS, conformance


def _rows(directory):
    return pd.read_csv(directory / "results.csv", keep_default_na=False).drop(columns="run_id")


def test_a_ray_run_of_the_quick_zoo_writes_the_rows_of_a_serial_run(quick_fast_run, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    # a local Ray instance, started and stopped by the run; the limit only stops a hang
    result = conformance("run", "--checks", "fast", "--executor", "ray", "--out", str(out), timeout=1800, subprocess_=True)
    assert result.returncode == 0, result.stderr[-3000:]
    serial, ray = _rows(quick_fast_run), _rows(out)
    assert len(serial) > 5000
    pd.testing.assert_frame_equal(serial, ray)
    metadata = json.loads((out / "run.json").read_text())
    assert metadata["executor"]["name"] == "ray" and "executor ray" in result.stderr


@pytest.mark.parametrize("strategies, raised", [
    (["hooks"], "BrokenProcessPool"),  # forked workers: the pool breaks, the other model runs again alone
    (["hooks", "torchlens"], "ChildProcessError"),  # interpreters of their own: only that worker is gone
])
def test_a_worker_that_dies_gives_rows_with_the_cause(tmp_path, strategies, raised):
    """A model whose worker process exits (a native crash, out of memory) is rows, not the end of the run."""
    if "torchlens" in strategies:
        pytest.importorskip("torchlens")
    common = ["--model", f"{PITFALLS}:exits_the_process", "--model", f"{PITFALLS}:plain", "--strategies", *strategies, "--checks", "values", "shape"]
    result = conformance("run", *common, "--jobs", "2", "--out", str(tmp_path / "run"), subprocess_=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(tmp_path / "run")
    crashed = rows[rows["model"].str.endswith("exits_the_process")]
    assert set(crashed["status"]) == {"error"} and set(crashed["diagnosis"]) == {"worker_crashed"}
    assert raised in crashed["detail"].iloc[0]
    assert set(rows[rows["model"].str.endswith(":plain")]["status"]) == {"pass"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["executor"]["fresh_interpreters"] is ("torchlens" in strategies)


@pytest.mark.parametrize("strategies", [["hooks"], ["hooks", "torchlens"]], ids=["forked workers", "fresh interpreters"])
def test_ctrl_c_writes_the_finished_models_and_ends_the_busy_workers_at_once_without_a_traceback(tmp_path, strategies):
    """Ctrl-C reaches every process of the run (the terminal signals its process group): the
    workers leave it to the driver, which writes what is done and ends them, busy or not.
    Planted: a model whose forward sleeps for ten minutes, behind one that finishes."""
    if "torchlens" in strategies:
        pytest.importorskip("torchlens")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "conformance", "run", "--model", f"{PITFALLS}:plain", "--model", f"{PITFALLS}:sleeps",
               "--strategies", *strategies, "--checks", "values", "--jobs", "2", "--out", str(out)]
    # SIGINT as a terminal leaves it: a shell without job control starts background commands, and
    # so perhaps these tests, with it ignored, and Python then installs no KeyboardInterrupt for it
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not ((out / "results.csv").exists() and ":plain" in (out / "results.csv").read_text()):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended or never wrote the finished model"
            time.sleep(0.5)
        time.sleep(1)  # the sleeping model is in its forward by now
        os.killpg(run.pid, signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr[-3000:]
    assert time.monotonic() - interrupted < 60  # not the ten minutes of the sleeping forward
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "interrupted; finished units are in" in stderr
    rows = _rows(out)
    assert set(rows["model"].str.rpartition(":")[2]) == {"plain"} and set(rows["status"]) == {"pass"}
    assert json.loads((out / "run.json").read_text())["interrupted"] is True


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="dask", jobs=1, ray_address=None), "unknown executor 'dask'"),
        (dict(name="serial", jobs=1, ray_address="ray://head:10001"), "--ray-address needs --executor ray"),
    ],
)
def test_bad_executor_options_name_the_value(options, message):
    with pytest.raises(ConformanceError, match=message):
        make_executor(threads=1, device="cpu", **options)


def test_ray_missing_is_an_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConformanceError) as caught:
        make_executor(name="ray", jobs=1, threads=1, device="cpu", ray_address=None)
    assert "pip install 'feature-conformance[ray]'" in str(caught.value)


@pytest.mark.parametrize("text, device, jobs", [("auto", "cpu", 6), ("auto", "cuda", 1), ("3", "cpu", 3)])
def test_jobs_auto_is_one_process_per_core_on_the_cpu_and_one_on_cuda(text, device, jobs):
    assert _jobs(text, cores=6, device=device) == jobs


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_jobs_that_are_no_positive_number_are_a_clear_error(text):
    with pytest.raises(ConformanceError, match=f"--jobs {text} is not a positive number"):
        _jobs(text, cores=2, device="cpu")


@pytest.mark.parametrize("options, expected", [
    ([], True),  # the quick zoo, a process per core
    (["--model", "timm:resnet18", "--model", "timm:vit_tiny_patch16_224"], True),
    (["--model", "timm:resnet18"], False),  # one model runs in this process
    (["--jobs", "1"], False),
    (["--jobs", "0"], False),  # bad input, reported when the run is configured
    (["--executor", "serial", "--jobs", "2"], False),
    (["--executor", "ray"], False),
    (["--executor", "processes", "--model", "timm:resnet18"], True),
    (["--device", "cuda"], False),  # auto: one process on CUDA
])
def test_the_worker_server_is_started_early_only_for_runs_that_may_use_processes(options, expected):
    args = _parser().parse_args(["run", "--threads", "2", *options])
    assert _may_use_processes(args) is expected


@pytest.mark.parametrize("options, expected", [
    ([], True), (["--model", "a", "--model", "b"], True), (["--model", "a"], False), (["--jobs", "1"], False),
    (["--jobs=1"], False), (["--executor", "serial", "--jobs", "2"], False), (["--executor=ray"], False),
    (["--executor", "processes", "--model", "a"], True), (["--model", "a", "--jobs", "2"], True), (["--device", "cuda:0"], False),
    (["--help"], False),
])
def test_the_command_guesses_before_importing_torch_whether_a_run_forks_workers(options, expected, monkeypatch):
    """The guess of ``conformance.launch`` (before the options are parsed) agrees with the parsed
    decision on the cases above; another command never starts the fork server."""
    from conformance import __main__ as launch

    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)
    assert launch._will_fork_workers(["run", *options]) is expected
    assert not launch._will_fork_workers(["report", *options])
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 1)
    assert not launch._will_fork_workers(["run", *options])


def test_the_command_imports_no_torch_before_it_starts_the_fork_server():
    code = "import sys, conformance.__main__, conformance.running.workers; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_run_of_several_models_uses_a_process_per_core_by_default(tmp_path):
    common = ["--model", f"{PITFALLS}:plain", "--model", f"{PITFALLS}:reused_module", "--strategies", "hooks", "--checks", "values"]
    result = conformance("run", *common, "--out", str(tmp_path / "run"), subprocess_=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((tmp_path / "run" / "run.json").read_text())
    jobs = min(metadata["machine_info"]["torch_threads"], 2)
    assert metadata["executor"]["jobs"] == jobs
    assert metadata["executor"]["name"] == ("processes" if jobs > 1 else "serial")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_each_models_phases_are_in_the_run_metadata_in_a_serial_run_and_from_workers(tmp_path, jobs):
    """``model_seconds``: each model's phases, which add up to no more than the run's (a model
    with no entry, as before the executors charged them, fails it)."""
    models = [f"{PITFALLS}:plain", f"{PITFALLS}:reused_module"]
    result = conformance("run", "--model", models[0], "--model", models[1], "--strategies", "hooks", "hooks+clone",
                         "--checks", "fast", "--jobs", jobs, "--out", str(tmp_path / "run"), subprocess_=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((tmp_path / "run" / "run.json").read_text())
    by_model, timings = metadata["model_seconds"], metadata["timings"]
    assert {name.rsplit(":", 1)[1] for name in by_model} == {"plain", "reused_module"}
    for phases in by_model.values():
        assert phases.get("oracle", 0) > 0 and phases.get("forward", 0) > 0 and "rest" not in phases
    for phase_name in {name for phases in by_model.values() for name in phases}:
        assert sum(phases.get(phase_name, 0) for phases in by_model.values()) <= timings[phase_name] + 0.01
    assert "the models with the most of it: " in result.stdout


def test_torchlens_runs_in_workers_that_are_interpreters_of_their_own_and_gives_the_serial_rows(tmp_path):
    """TorchLens refuses a capture in a multiprocessing child; with ``--jobs 2`` the workers of a
    run with TorchLens are interpreters of their own, and the rows are a serial run's."""
    pytest.importorskip("torchlens")
    common = ["--model", f"{PITFALLS}:plain", "--model", f"{PITFALLS}:reused_module", "--strategies", "hooks", "torchlens",
              "--checks", "fast"]
    runs = {}
    for jobs in ("1", "2"):
        result = conformance("run", *common, "--jobs", jobs, "--out", str(tmp_path / jobs), subprocess_=True)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[jobs] = _rows(tmp_path / jobs)
    executor = json.loads((tmp_path / "2" / "run.json").read_text())["executor"]
    assert executor["name"] == "processes" and executor["fresh_interpreters"] is True
    assert "interpreters of their own" in result.stderr
    torchlens = runs["2"][runs["2"]["strategy"] == "torchlens"]
    assert len(torchlens) > 10 and "error" not in set(torchlens["status"]) and "pass" in set(torchlens["status"])
    pd.testing.assert_frame_equal(runs["1"], runs["2"])


def test_torchlens_in_a_forked_worker_is_refused_which_is_why_its_runs_have_fresh_interpreters():
    """The control: the same unit in a forked worker (the other runs' workers) is all errors,
    TorchLens's ``child_process_capture_unsupported``; were it not, fresh interpreters would be moot."""
    pytest.importorskip("torchlens")
    from dataclasses import replace

    from conformance.cli import _parser, run_config
    from conformance.running.executors import _Payload, main_process_only, run_payload, worker_context
    from concurrent.futures import ProcessPoolExecutor

    assert main_process_only("torchlens") and not main_process_only("hooks")
    config, _ = run_config(_parser().parse_args(["run", "--model", f"{PITFALLS}:plain", "--strategies", "torchlens", "--checks", "values"]))
    payload = _Payload(f"{PITFALLS}:plain", config.models[0].input_shape, ("torchlens",), replace(config, models=[]), 1, True)
    with ProcessPoolExecutor(max_workers=1, mp_context=worker_context()) as pool:
        outcome = pool.submit(run_payload, payload).result()
    [(strategy_name, rows)] = outcome["units"]
    assert strategy_name == "torchlens" and rows and {row.status for row in rows} == {"error"}
    assert all("child process" in row.detail for row in rows)
