"""The ``conformance`` command line.

    conformance run                                   # the quick zoo, every strategy
    conformance run --model torchvision:resnet18 --layers layer1 bn1 --out runs/r18
    conformance matrix runs/r18                       # checks x strategies, models passing
    conformance matrix runs/r18 --strategy fx --check set_independence
    conformance bench --model torchvision:resnet18 --layers layer1 --layers @stages --out runs/r18
    conformance report runs/r18 --out reports/r18         # report.md, index.html, plots, data
    conformance recommend --model torchvision:resnet18 --layers layer1 layer3 --need gradients train_mode
    conformance baseline save runs/r18 --out baselines/r18.json
    conformance diff baselines/r18.json runs/r18-new --fail-on overhead:10% --markdown diff.md
    conformance manifest save --zoo quick --out reports/manifests/quick.json
    conformance manifest diff reports/manifests/quick.json              # against the installed versions
    conformance manifest noise                        # float noise across simulated machines, against the bound
    conformance upgrade --to torch==2.15.0 --to torchvision==0.29.2 --bench --manifest --out runs/up   # [run options]
    conformance list models|layers MODEL|strategies|checks

``conformance run`` reads its defaults from ``[tool.conformance]`` of ``./pyproject.toml``
(``conformance/config.py``); its flags override them.

Bad input prints a message and a hint and exits 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from strategies import CORE_STRATEGIES, available_strategies, list_strategies

from conformance.config import load_config
from conformance.core.errors import ConformanceError
from conformance.truth.layers import LAYER_SETS, SET_NAMES, resolve_layers
from conformance.judging.profiles import ALL_CHECKS, PROFILES, describe, expand_checks
from conformance.core.environment import run_metadata
from conformance.core.allocator import reuse_freed_memory
from conformance.evidence.bench import BenchConfig, bench
from conformance.evidence.reports import capability_matrix, cell_models, cost_tables, headline
from conformance.evidence.results import BenchWriter, ResultsWriter, load_results, summary_table
from conformance.running.runner import RunConfig, make_deterministic
from conformance.running.schedule import run
from conformance.core.timing import Timings, harness_share, heaviest_models
from conformance.running.executors import EXECUTORS, main_process_only, make_executor, start_worker_server
from conformance.zoo.lists import list_models, zoo_input_shape
from conformance.zoo.specs import build_model, parse_input_shape, resolve_model

__all__ = ["main", "run_arguments", "run_config"]


def _unknown(kind: str, name: str, known: Sequence[str]) -> ConformanceError:
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(known)}"
    return ConformanceError(f"unknown {kind} {name!r}", hint=hint)


def _choose(kind: str, requested: Sequence[str], known: Sequence[str]) -> list[str]:
    chosen = []
    for name in requested:
        if name == "all":
            chosen.extend(known)
            continue
        if name not in known:
            raise _unknown(kind, name, known)
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def _checks(requested: Sequence[str]) -> list[str]:
    try:
        return expand_checks(requested)
    except KeyError as exc:
        raise _unknown("check", exc.args[0], list(dict.fromkeys([*PROFILES, *ALL_CHECKS]))) from None


def _parser(run_defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``run_defaults`` (from ``[tool.conformance]``) replace the defaults of ``run``."""
    parser = argparse.ArgumentParser(prog="conformance", description="Which feature-extraction strategy returns the true activations?")
    commands = parser.add_subparsers(dest="command", required=True)

    run_ = commands.add_parser("run", help="run the conformance checks and write tidy results")
    run_.add_argument("--model", action="append", metavar="REF", help="torchvision:NAME, timm:NAME, hf:TYPE, file.py:factory or pkg.mod:factory (repeatable)")
    run_.add_argument("--zoo", default=None, help="quick (default when no --model), torchvision, torchvision-all, torchvision-families, timm, timm-families, hf-families or all")
    run_.add_argument("--include", nargs="+", default=["*"], metavar="PATTERN", help="fnmatch patterns selecting zoo models")
    run_.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN", help="fnmatch patterns excluding zoo models")
    run_.add_argument("--include-big", action="store_true", help="also run models above the parameter cap")
    run_.add_argument("--layers", nargs="+", default=["@children", "@stages"], metavar="LAYER",
                      help="module paths, FX node names, or @children, @stages, @leaves, @nodes (default: @children @stages)")
    run_.add_argument("--strategies", nargs="+", default=["all"], metavar="NAME", help="strategy names, or all (default)")
    run_.add_argument("--checks", nargs="+", default=["default"], metavar="NAME",
                      help=f"check names or profiles ({', '.join(PROFILES)}; default: default, all but {', '.join(PROFILES['slow'])})")
    run_.add_argument("--device", default="cpu", help="cpu or cuda")
    run_.add_argument("--input-shape", default=None, metavar="N,C,H,W", help="input shape for every model")
    run_.add_argument("--seed", type=int, default=0)
    run_.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    run_.add_argument("--cell-timeout", type=float, default=300.0, metavar="SECONDS", help="time limit of one model-strategy unit")
    run_.add_argument("--out", type=Path, default=None, help="results directory (default runs/<timestamp>)")
    run_.add_argument("--shard", default=None, metavar="K/N", help="run the K-th of N deterministic slices of the models (merge them with 'conformance merge')")
    run_.add_argument("--jobs", default="auto", metavar="N",
                      help="run the models in N processes on this machine, the cores shared out as torch threads "
                           "(default: auto, one per core on the CPU, at most one per model; one on CUDA; 1: in this process)")
    run_.add_argument("--executor", choices=EXECUTORS, default=None,
                      help="where the models run: serial, processes (the default for --jobs above 1, as auto is on several cores), or ray (one Ray task per model)")
    run_.add_argument("--ray-address", default=None, metavar="ADDRESS", help="with --executor ray: the cluster to use (default: a local Ray instance)")
    run_.add_argument("--resume", action="store_true", help="carry on with the run in --out")
    run_.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    run_.add_argument("--redo", metavar="QUERY",
                      help="with --resume: run again every unit (model, strategy) with a row this pandas query selects, "
                           "e.g. \"diagnosis == 'unexplained'\"")
    run_.set_defaults(**(run_defaults or {}))

    bench_ = commands.add_parser("bench", help="what each strategy costs: latency, overhead, floor ratio, build time, memory")
    bench_.add_argument("--model", action="append", metavar="REF", help="torchvision:NAME, timm:NAME, file.py:factory or pkg.mod:factory (repeatable; default torchvision:resnet18)")
    bench_.add_argument("--layers", action="append", nargs="+", metavar="LAYER",
                        help="one layer request: module paths, FX node names or @children, @stages, @leaves, @nodes; repeat the option for more requests (default: @stages)")
    bench_.add_argument("--strategies", nargs="+", default=["all"], metavar="NAME", help="strategy names, or all (default)")
    bench_.add_argument("--device", default="cpu", help="cpu or cuda")
    bench_.add_argument("--input-shape", default=None, metavar="N,C,H,W", help="input shape for every model")
    bench_.add_argument("--seed", type=int, default=0)
    bench_.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    bench_.add_argument("--max-time", type=float, default=30.0, metavar="SECONDS", help="timing budget of one request (default 30)")
    bench_.add_argument("--precision", type=float, default=0.01, metavar="FRACTION",
                        help="stop timing once every ratio's 95%% interval is this close to its median (default 0.01)")
    bench_.add_argument("--out", type=Path, default=None, help="directory for bench.csv (default runs/<timestamp>; may hold a conformance run)")
    bench_.add_argument("--overwrite", action="store_true", help="replace the bench results in --out")

    precision = commands.add_parser("precision", help="how far the true features move under repeats, batch splits, channels_last, "
                                                      "nondeterministic kernels, TF32 and another device, against the checks' tolerance")
    precision.add_argument("--model", action="append", metavar="REF", help="a model reference (repeatable; default: the quick zoo)")
    precision.add_argument("--zoo", default=None, help="a zoo, as for run (default quick, at its input sizes)")
    precision.add_argument("--layers", nargs="+", default=["@stages"], metavar="LAYER", help="module paths or layer sets (default @stages)")
    precision.add_argument("--device", default="cpu", help="cpu or cuda")
    precision.add_argument("--seed", type=int, default=0)
    precision.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    precision.add_argument("--out", type=Path, default=None, help="directory for precision.csv and precision.json (default runs/<timestamp>)")

    merge = commands.add_parser("merge", help="combine the results of runs on several machines (the shards of one run)")
    merge.add_argument("results", nargs="+", type=Path, help="directories written by 'conformance run'")
    merge.add_argument("--out", type=Path, required=True, help="directory for the merged results")
    merge.add_argument("--force", action="store_true", help="merge runs of different package versions or devices")

    matrix = commands.add_parser("matrix", help="the capability matrix of a run: checks x strategies, models passing")
    matrix.add_argument("results", type=Path, help="a run's --out directory, its results.csv or results.json")
    matrix.add_argument("--strategy", help="with --check: the models behind one cell")
    matrix.add_argument("--check", help="with --strategy: the models behind one cell")

    report = commands.add_parser("report", help="a publishable report (Markdown, offline HTML, plots) of one or more runs")
    report.add_argument("results", nargs="+", type=Path, help="directories written by 'conformance run' and/or 'conformance bench'")
    report.add_argument("--out", type=Path, required=True, help="directory for report.md, index.html, the plots and data/")

    recommend = commands.add_parser("recommend", help="the strategies that pass the checks you need, cheapest first, with the evidence")
    recommend.add_argument("--model", required=True, metavar="REF", help="torchvision:NAME, timm:NAME, file.py:factory or pkg.mod:factory")
    recommend.add_argument("--layers", nargs="+", required=True, metavar="LAYER", help="module paths, FX node names or @children, @stages, @leaves, @nodes")
    recommend.add_argument("--need", nargs="+", default=[], metavar="CHECK", help="checks every recommended strategy must pass, besides values")
    recommend.add_argument("--strategies", nargs="+", default=["all"], metavar="NAME", help="strategy names, or all (default)")
    recommend.add_argument("--results", type=Path, default=None, help="read a run (and bench) from this directory instead of measuring")
    recommend.add_argument("--device", default="cpu", help="cpu or cuda")
    recommend.add_argument("--input-shape", default=None, metavar="N,C,H,W", help="the model's input shape")
    recommend.add_argument("--seed", type=int, default=0)
    recommend.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    recommend.add_argument("--max-time", type=float, default=10.0, metavar="SECONDS", help="timing budget of the bench (default 10)")
    recommend.add_argument("--out", type=Path, default=None, help="where the measurements go (default runs/<timestamp>)")

    baseline = commands.add_parser("baseline", help="save a run's rows as a baseline file to diff later runs against")
    baseline.add_argument("action", choices=("save",))
    baseline.add_argument("results", type=Path, help="a directory written by 'conformance run' and/or 'conformance bench'")
    baseline.add_argument("--out", type=Path, required=True, help="the baseline JSON file")

    diff_ = commands.add_parser("diff", help="what changed between two runs; exit 1 on a regression")
    diff_.add_argument("base", type=Path, help="a baseline file or a run directory")
    diff_.add_argument("new", type=Path, help="a baseline file or a run directory")
    diff_.add_argument("--fail-on", nargs="+", default=[], metavar="METRIC:LIMIT", help="cost regressions that fail, e.g. overhead:10%% peak_memory:20%%")
    diff_.add_argument("--markdown", type=Path, default=None, help="also write the diff as Markdown (a pull-request comment)")

    manifest = commands.add_parser("manifest", help="golden manifests: module paths, FX nodes, feature_info, feature shapes and fingerprints")
    manifest.add_argument("action", choices=("save", "diff", "noise"),
                          help="save a manifest; diff two (or one against the installed versions); measure float noise across simulated machines")
    manifest.add_argument("files", nargs="*", type=Path, help="diff: BASE [NEW]; without NEW, BASE's models are taken again under the installed versions")
    manifest.add_argument("--model", action="append", metavar="REF", help="save, noise: the models (repeatable; default the --zoo)")
    manifest.add_argument("--zoo", default="quick", help="save, noise: quick (default), torchvision, timm, timm-families or all")
    manifest.add_argument("--out", type=Path, default=None, help="save: the manifest file; noise: a directory for the manifests taken (default a temporary one)")
    manifest.add_argument("--seed", type=int, default=0)
    manifest.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")

    fuzz = commands.add_parser("fuzz", help="generated models (Hypothesis): the values verdicts against the generator's own truth")
    fuzz.add_argument("--models", type=int, default=100, metavar="N", help="models to generate and judge (default 100)")
    fuzz.add_argument("--jobs", type=int, default=1, metavar="N", help="processes, each drawing its share from its own seed (default 1)")
    fuzz.add_argument("--seed", type=int, default=0, help="Hypothesis's seed (the jobs take SEED, SEED+1, ...)")
    fuzz.add_argument("--out", type=Path, default=None, help="where summary.json and README.md go (default runs/fuzz-<timestamp>)")
    fuzz.add_argument("--overwrite", action="store_true", help="replace the summary in --out")

    upgrade = commands.add_parser(
        "upgrade", allow_abbrev=False, help="the same run under the installed packages and under candidate versions (built with uv), and what changed",
        description="Run the same conformance run in this environment (before) and in one where the packages named with --to have the "
                    "versions given (after; built with uv, every other package pinned as installed here), then write one folder: a README "
                    "of what changed for each strategy, the conformance, cost and manifest diffs, and both sides' rows and packages. "
                    "Exit 1 on a regression (conformance diff's rules), 2 on bad input.",
        epilog="Every other option is a 'conformance run' option and goes to both sides' runs: --model, --zoo, --include, --exclude, "
               "--layers, --strategies, --checks, --device, --input-shape, --seed, --jobs, ... (conformance run --help). "
               "uv reads its package indexes from UV_INDEX_URL, UV_EXTRA_INDEX_URL and uv.toml.")
    upgrade.add_argument("--to", action="append", default=[], metavar="NAME==VERSION", help="a package version of the after side (repeatable)")
    upgrade.add_argument("--after-python", type=Path, default=None, metavar="PYTHON",
                         help="instead of --to: the interpreter of an existing environment to use as the after side (it needs this project installed)")
    upgrade.add_argument("--bench", action="store_true", help="also measure the costs of both sides (conformance bench at @stages) and diff them")
    upgrade.add_argument("--bench-max-time", type=float, default=10.0, metavar="SECONDS", help="with --bench: timing budget of one model (default 10)")
    upgrade.add_argument("--fail-on", nargs="+", default=["overhead:10%", "floor_ratio:10%"], metavar="METRIC:LIMIT",
                         help="with --bench: cost regressions that fail (default overhead:10%% floor_ratio:10%%)")
    upgrade.add_argument("--manifest", action="store_true", help="also take both sides' golden manifests of the models and diff them")
    upgrade.add_argument("--out", type=Path, default=None, help="the upgrade's folder (default runs/upgrade-<timestamp>)")
    upgrade.add_argument("--resume", action="store_true", help="carry on with the upgrade in --out")
    upgrade.add_argument("--overwrite", action="store_true", help="replace the upgrade in --out")
    upgrade.add_argument("--uv", type=Path, default=None, help="the uv executable (default: the one on PATH, or the uv package's)")
    upgrade.add_argument("--env-cache", type=Path, default=None, metavar="DIR",
                         help="where built after-side environments are kept and reused (default ~/.cache/feature-conformance/upgrade-envs)")

    list_ = commands.add_parser("list", help="list models, layers, strategies or checks")
    list_.add_argument("what", choices=("models", "layers", "strategies", "checks"))
    list_.add_argument("model", nargs="?", help="the model, for 'list layers'")
    list_.add_argument("--zoo", default="all", help="for 'list models': quick, torchvision, torchvision-all, torchvision-families, timm, timm-families, hf-families or all")
    list_.add_argument("--include", nargs="+", default=["*"], metavar="PATTERN", help="for 'list models': fnmatch patterns selecting models")
    list_.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN", help="for 'list models': fnmatch patterns excluding models")
    list_.add_argument("--nodes", action="store_true",
                       help="for 'list layers': every node of the forward pass (train and eval), what it is, and which strategies can express it")
    return parser


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ConformanceError(f"cannot read --shard {text!r}", hint="write K/N with 1 <= K <= N, e.g. --shard 2/8")
    return int(index), int(count)


def _check_device(device: str) -> None:
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConformanceError(f"unknown device {device!r}", hint="use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConformanceError(f"--device {device}: CUDA is not available here", hint=f"torch {torch.__version__} sees no GPU; run with --device cpu")


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _start(args: argparse.Namespace) -> tuple[Path, dict]:
    """Seed and threads fixed; the output directory and the run metadata."""
    threads = args.threads or torch.get_num_threads()
    make_deterministic(seed=args.seed, threads=threads)
    out = _out_dir(args)
    metadata = run_metadata(device=args.device, command=["conformance", *args.argv], seed=args.seed, threads=threads)
    metadata["run_id"] = f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    return out, metadata


def run_config(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """What ``conformance run`` (or the pytest plugin) runs for ``args``, and the model references."""
    _check_device(args.device)
    input_shape = parse_input_shape(args.input_shape) if args.input_shape else None
    strategies = _choose("strategy", args.strategies, list_strategies())
    checks = _checks(args.checks)
    references = args.model or list_models(zoo=args.zoo or "quick", include=args.include, exclude=args.exclude)
    if not references:
        raise ConformanceError("no model selected", hint="loosen --include/--exclude, or name one with --model")
    if getattr(args, "shard", None):
        index, count = _shard(args.shard)
        references = sorted(references)[index - 1::count]
        if not references:
            raise ConformanceError(f"shard {args.shard} holds no model", hint="use fewer shards than models")
    zoo = None if args.model else args.zoo or "quick"
    models = [resolve_model(ref, input_shape=input_shape or zoo_input_shape(zoo=zoo, reference=ref)) for ref in references]
    for layer in args.layers:
        if layer.startswith("@") and layer not in SET_NAMES:
            raise ConformanceError(f"unknown layer set {layer!r}", hint=f"choose one of {', '.join(SET_NAMES)}")
    config = RunConfig(
        models=models, layers=args.layers, strategies=strategies, checks=checks, device=args.device,
        seed=args.seed, cell_timeout=args.cell_timeout, include_big=args.include_big,
    )
    return config, references


def _jobs(text: str, *, cores: int, device: str) -> int:
    """``--jobs``: a positive number, or ``auto`` (one per core on the CPU, one on CUDA: the
    models would share one GPU)."""
    if text == "auto":
        return 1 if device.startswith("cuda") else cores
    if not text.isdigit() or int(text) < 1:
        raise ConformanceError(f"--jobs {text} is not a positive number", hint="--jobs 1 runs in this process; --jobs N uses N processes; --jobs auto one per core")
    return int(text)


def _executor_plan(args: argparse.Namespace, *, models: int | None) -> tuple[str, int]:
    """The executor and the number of jobs for a run of ``models`` models (None: not known yet)."""
    jobs = _jobs(args.jobs, cores=args.threads or torch.get_num_threads(), device=args.device)
    jobs = jobs if models is None else min(jobs, models)
    return args.executor or ("processes" if jobs > 1 else "serial"), jobs


def _may_use_processes(args: argparse.Namespace) -> bool:
    """Whether ``conformance run`` may run its models in worker processes, known before the
    models are resolved (a bad ``--jobs`` is reported later)."""
    try:
        executor_name, _ = _executor_plan(args, models=len(args.model) if args.model else None)
    except ConformanceError:
        return False
    return executor_name == "processes"


def _command_run(args: argparse.Namespace) -> int:
    reuse_freed_memory()  # models copied in this process (a serial run) reuse the pages of the copy before
    if _may_use_processes(args):
        start_worker_server()
    config, _ = run_config(args)
    total_threads = args.threads or torch.get_num_threads()
    executor_name, jobs = _executor_plan(args, models=len(config.models))
    task_threads = max(1, total_threads // jobs) if executor_name == "processes" else total_threads
    out, metadata = _start(args)
    # a strategy that refuses multiprocessing children (TorchLens) has worker processes that are interpreters of their own
    fresh_interpreters = executor_name == "processes" and any(main_process_only(name) for name in config.strategies)
    metadata.update(shard=args.shard, executor={"name": executor_name, "jobs": jobs, "task_threads": task_threads, "ray_address": args.ray_address,
                                                "fresh_interpreters": fresh_interpreters})
    if args.redo and not args.resume:
        raise ConformanceError("--redo runs units of an earlier run again", hint="pass --resume and the --out of that run")
    writer = ResultsWriter(out, metadata=metadata, resume=args.resume, overwrite=args.overwrite, redo=args.redo)
    executor = make_executor(name=executor_name, jobs=jobs, threads=task_threads, device=args.device, ray_address=args.ray_address,
                             fresh_interpreters=fresh_interpreters)
    if executor_name != "serial":
        workers = f"{jobs} worker processes" if executor_name == "processes" else "one Ray task per model"
        workers += " (interpreters of their own: a strategy refuses multiprocessing children)" if fresh_interpreters else ""
        print(f"executor {executor_name}: {workers}, {task_threads} torch threads each (--jobs 1: all in this process)", file=sys.stderr)
    from tqdm import tqdm

    total = len(config.models) * len(config.strategies) - len(writer.done)
    timings = Timings()
    with tqdm(total=total, unit="unit", disable=None, file=sys.stderr) as progress:
        interrupted = False
        try:
            run(config, writer=writer, timings=timings, progress=progress, executor=executor)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            executor.close(at_once=interrupted)
    if interrupted:
        writer.finish(extra={"interrupted": True, "timings": timings.split(), "strategy_seconds": timings.strategy_split(),
                             "model_seconds": timings.model_split()})
        print(f"\ninterrupted; finished units are in {out} (carry on with --resume)", file=sys.stderr)
        return 130
    split, by_strategy, by_model = timings.split(), timings.strategy_split(), timings.model_split()
    frame = writer.finish(extra={"timings": split, "strategy_seconds": by_strategy, "model_seconds": by_model})
    _summarise_run(out, frame, metadata, split, by_strategy, by_model)
    return 0


def _summarise_run(out: Path, frame: pd.DataFrame, metadata: dict, split: dict[str, float], by_strategy: dict[str, float],
                   by_model: dict[str, dict[str, float]]) -> None:
    """Write ``summary.md`` and print the capability matrix and the status counts."""
    text = summary_table(frame).to_string()
    matrix = capability_matrix(frame).to_string()
    top = headline(frame).drop(columns="query").to_string(index=False)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in split.items())
    strategy_timing = ", ".join(f"{k} {v:.1f}s" for k, v in by_strategy.items())
    harness = harness_share(split)
    heaviest = heaviest_models(by_model)
    fence = "```"
    (out / "summary.md").write_text(
        f"# Conformance summary\n\nRegenerate with: `{' '.join(metadata['command'])}`\n\n"
        f"{len(frame)} rows, {frame['model'].nunique()} models, device {metadata['device']}, "
        f"torch {metadata['versions']['torch']}, torchvision {metadata['versions']['torchvision']}, timm {metadata['versions']['timm']}\n\n"
        f"## Headline\n\n{fence}\n{top}\n{fence}\n\n"
        f"## Capability matrix: models passing each check\n\n{fence}\n{matrix}\n{fence}\n\n"
        f"The models behind a cell: `conformance matrix {out} --strategy NAME --check NAME`\n\n"
        f"## Rows by status\n\n{fence}\n{text}\n{fence}\n\nWall time: {timing}\n\nThe harness's own work: {harness}; most in {heaviest} (every model's phases: `model_seconds` in run.json)\n\nWall time of each strategy's units: {strategy_timing}\n"
    )
    print(matrix)
    print(f"\n{top}")
    print(f"\n{text}")
    print(f"\nwall time: {timing}")
    print(f"the harness's own work: {harness}")
    print(f"the models with the most of it: {heaviest}")
    print(f"wall time of each strategy's units: {strategy_timing}")
    print(f"results: {out / 'results.csv'} ({len(frame)} rows), {out / 'results.json'}, summary: {out / 'summary.md'}")


def _command_bench(args: argparse.Namespace) -> int:
    _check_device(args.device)
    for option, value in (("--max-time", args.max_time), ("--precision", args.precision)):
        if not value > 0:
            raise ConformanceError(f"{option} {value:g} is not positive", hint=f"e.g. {option} {30 if option == '--max-time' else 0.01}")
    input_shape = parse_input_shape(args.input_shape) if args.input_shape else None
    strategies = _choose("strategy", args.strategies, list_strategies())
    models = [resolve_model(ref, input_shape=input_shape) for ref in args.model or ["torchvision:resnet18"]]
    requests = args.layers or [["@stages"]]
    for layer in (item for request in requests for item in request):
        if layer.startswith("@") and layer not in SET_NAMES:
            raise ConformanceError(f"unknown layer set {layer!r}", hint=f"choose one of {', '.join(SET_NAMES)}")
    out, metadata = _start(args)
    metadata["bench"] = {"max_time": args.max_time, "precision": args.precision, "grad": False}
    writer = BenchWriter(out, metadata=metadata, overwrite=args.overwrite)
    config = BenchConfig(
        models=models, requests=requests, strategies=strategies, device=args.device, seed=args.seed,
        threads=metadata["machine_info"]["torch_threads"], max_time=args.max_time, precision=args.precision,
    )
    try:
        bench(config, writer=writer, log=lambda message: print(message, file=sys.stderr))
    except KeyboardInterrupt:
        writer.finish(extra={"interrupted": True})
        print(f"\ninterrupted; finished requests are in {out}", file=sys.stderr)
        return 130
    rows, samples = writer.finish(extra={})
    for (model, layers), (table, notes) in cost_tables(rows).items():
        rounds = samples.loc[(samples["model"] == model) & (samples["layers"] == layers), "round"].max()
        print(f"\n{model}  layers: {layers}  ({args.device}, {config.threads} threads, {0 if pd.isna(rounds) else int(rounds) + 1} rounds)")
        if not table.empty:
            print(table.to_string(index=False))
        for note in notes:
            print(f"  {note}")
    print(f"\nrows: {writer.rows_path} ({len(rows)} rows), samples: {writer.samples_path}, {out / 'bench.json'}")
    return 0


def _command_precision(args: argparse.Namespace) -> int:
    from conformance.evidence.precision import measure_precision, precision_summary

    _check_device(args.device)
    zoo = None if args.model else args.zoo or "quick"
    specs = [resolve_model(ref, input_shape=zoo_input_shape(zoo=zoo, reference=ref)) for ref in args.model or list_models(zoo=zoo)]
    out, metadata = _start(args)
    frame = measure_precision(specs=specs, device=args.device, seed=args.seed, layers=args.layers, log=lambda message: print(message, file=sys.stderr))
    frame.insert(0, "run_id", metadata["run_id"])
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "precision.csv", index=False)
    summary = precision_summary(frame)
    (out / "precision.json").write_text(json.dumps({**metadata, "summary": summary.to_dict("records")}, indent=1, default=str))
    print(summary.to_string(index=False))
    print(f"\nrows: {out / 'precision.csv'} ({len(frame)} rows), {out / 'precision.json'}")
    return 0


def _command_merge(args: argparse.Namespace) -> int:
    from conformance.evidence.results import merge_runs

    frame = merge_runs(args.results, out=args.out, force=args.force)
    print(f"merged {len(args.results)} runs: {args.out / 'results.csv'} ({len(frame)} rows, {frame['model'].nunique()} models)")
    return 0


def _command_matrix(args: argparse.Namespace) -> int:
    frame = load_results(args.results)
    if bool(args.strategy) != bool(args.check):
        raise ConformanceError("--strategy and --check go together", hint=f"conformance matrix {args.results} --strategy fx --check values")
    if args.strategy:
        print(cell_models(frame, strategy=args.strategy, check=args.check).to_string(index=False, max_colwidth=100))
        return 0
    print(capability_matrix(frame).to_string())
    print(f"\nmodels behind a cell: conformance matrix {args.results} --strategy NAME --check NAME")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from conformance.evidence.publish import write_report

    written = write_report(sources=args.results, out=args.out, command=" ".join(["conformance", *args.argv]))
    print(f"report: {args.out / 'report.md'}, {args.out / 'index.html'} ({len(written)} files)")
    return 0


def _command_recommend(args: argparse.Namespace) -> int:
    from conformance.evidence.recommend import recommend
    from conformance.evidence.results import load_bench

    _check_device(args.device)
    needs = _checks(args.need)
    strategies = _choose("strategy", args.strategies, list_strategies())
    spec = resolve_model(args.model, input_shape=parse_input_shape(args.input_shape) if args.input_shape else None)
    layers = resolve_layers(build_model(spec=spec, seed=args.seed), spec, args.layers)
    source = args.results
    if source is None:
        source, metadata = _start(args)
        checks = list(dict.fromkeys(["values", *needs]))
        print(f"measuring {', '.join(checks)} and costs of {len(strategies)} strategies on {spec.id} [{' '.join(layers)}] into {source}", file=sys.stderr)
        writer = ResultsWriter(source, metadata=dict(metadata), resume=False, overwrite=False)
        run(RunConfig(models=[spec], layers=layers, strategies=strategies, checks=checks, device=args.device, seed=args.seed), writer=writer, timings=Timings())
        writer.finish(extra={})
        bench_writer = BenchWriter(source, metadata=dict(metadata), overwrite=False)
        bench(BenchConfig(models=[spec], requests=[layers], strategies=strategies, device=args.device, seed=args.seed,
                          threads=metadata["machine_info"]["torch_threads"], max_time=args.max_time), writer=bench_writer, log=lambda message: None)
        bench_writer.finish(extra={})
    results = load_results(source)
    results = results[results["strategy"].isin(strategies)]
    costs = load_bench(source)[0] if (source / "bench.csv").exists() else pd.DataFrame()
    if spec.id not in set(results["model"]):
        raise ConformanceError(f"{source} holds no results for {spec.id}", hint=f"run: conformance run --model {spec.id} --layers {' '.join(args.layers)} --out {source}")
    eligible, excluded = recommend(results, costs, model=spec.id, layers=layers, needs=needs)
    print(f"{spec.id} [{' '.join(layers)}], needing {', '.join(['values', *needs])}:\n")
    if eligible.empty:
        print("no strategy passes every required check")
    else:
        shown = eligible.assign(overhead=[f"{o:.3f} [{lo:.3f}, {hi:.3f}]" if o == o else "not measured" for o, lo, hi in zip(eligible["overhead"], eligible["ci_low"], eligible["ci_high"])])
        print(shown.drop(columns=["ci_low", "ci_high"]).to_string(index=False))
    if not excluded.empty:
        print("\nexcluded:")
        for row in excluded.itertuples():
            print(f"  {row.strategy}: {row.why}")
    print(f"\nevidence: {source / 'results.csv'}" + (f", {source / 'bench.csv'}" if not costs.empty else " (no bench: order by cost unknown)"))
    return 0


def _command_baseline(args: argparse.Namespace) -> int:
    from conformance.evidence.diff import save_baseline

    count = save_baseline(source=args.results, out=args.out)
    print(f"baseline: {args.out} ({count} rows)")
    return 0


def _command_diff(args: argparse.Namespace) -> int:
    from conformance.evidence.diff import diff, load_side, markdown, parse_fail_on, plain_text

    thresholds = [parse_fail_on(text) for text in args.fail_on]
    result = diff(load_side(args.base), load_side(args.new), fail_on=thresholds)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(plain_text(result))
    if args.markdown:
        args.markdown.write_text(markdown(result, base=str(args.base), new=str(args.new)))
    return 1 if len(result.regressions) else 0


def _command_manifest(args: argparse.Namespace) -> int:
    from conformance.evidence.manifest import build_manifest, diff_manifests, load_manifest, save_manifest

    make_deterministic(seed=args.seed, threads=args.threads or torch.get_num_threads())
    if args.action in ("save", "noise") and args.files:
        raise ConformanceError(f"'manifest {args.action}' takes no positional files", hint="conformance manifest save --zoo quick --out manifests/quick.json")
    references = args.model or list_models(zoo=args.zoo)
    if args.action == "save":
        if args.out is None:
            raise ConformanceError("'manifest save' needs --out FILE", hint="conformance manifest save --zoo quick --out manifests/quick.json")
        save_manifest(references=references, out=args.out, seed=args.seed)
        print(f"manifest: {args.out} ({len(references)} models)")
        return 0
    if args.action == "noise":
        return _manifest_noise(references, seed=args.seed, out=args.out)
    if not 1 <= len(args.files) <= 2:
        raise ConformanceError("'manifest diff' takes BASE and optionally NEW", hint="conformance manifest diff base.json [new.json]")
    base = load_manifest(args.files[0])
    new = load_manifest(args.files[1]) if len(args.files) == 2 else build_manifest(list(base["models"]), seed=base["seed"])
    result = diff_manifests(base, new)
    for note in result.notes:
        print(note)
    if result.changes:
        print(pd.DataFrame(result.changes).to_string(index=False, max_colwidth=90))
    print(f"{len(result.changes)} difference(s) in {len(base['models'])} models")
    return 1 if result.changes else 0


def _manifest_noise(references: list[str], *, seed: int, out: Path | None) -> int:
    """``manifest noise``: the fingerprints' float noise across simulated machines, against the bound."""
    import tempfile

    from conformance.evidence.fingerprints import NOISE_BOUND
    from conformance.evidence.noise import SIMULATED_MACHINES, measure_noise

    with tempfile.TemporaryDirectory() as scratch:
        print(f"taking the manifest of {len(references)} models on this machine and {len(SIMULATED_MACHINES)} simulated ones", file=sys.stderr)
        frame = measure_noise(references=references, seed=seed, workdir=out or Path(scratch))
    shown = frame.assign(largest=frame["largest"].map("{:.2g}".format), of_bound=frame["of_bound"].map("{:.2f}".format))
    print(shown.to_string(index=False))
    print(f"\nlargest deviation in units of rms * sqrt(elements summed); the bound is {NOISE_BOUND:g} (conformance/evidence/fingerprints.py)")
    flagged = int((frame["changes"] > 0).sum())
    print(f"{flagged} simulated machine(s) with differences a diff would report" if flagged else "every simulated machine stays within the bound")
    return 1 if flagged else 0


def _command_upgrade(args: argparse.Namespace) -> int:
    from conformance.evidence import upgrade as upgrading

    own = [option for option in args.run_options if option.split("=")[0] in upgrading.OWN_RUN_OPTIONS]
    if own:
        raise ConformanceError(f"conformance upgrade does not take {own[0]}", hint="--out, --resume and --overwrite are the upgrade's own; shards and --redo are not supported")
    run_args = _parser(args.run_defaults).parse_args(["run", *args.run_options])
    config, references = run_config(run_args)
    if bool(args.to) == bool(args.after_python):
        raise ConformanceError("name the after side's versions with --to, or give its environment with --after-python (one of the two)",
                               hint="conformance upgrade --to torch==2.15.0 --to torchvision==0.29.2")
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.to:
        installed = upgrading.installed_distributions()
        targets = upgrading.parse_targets(args.to, installed=installed)
        uv = upgrading.find_uv(args.uv)
        if args.resume and not (args.out and (args.out / "upgrade.json").exists()):
            raise ConformanceError("--resume carries on with an upgrade in --out", hint="pass the --out of that upgrade")
        requirements = upgrading.after_requirements(targets, installed=installed)
        environment = upgrading.build_environment(requirements=requirements, targets=list(targets.values()),
                                                  cache=args.env_cache or upgrading.default_env_cache(), uv=uv, log=log)
        after_python = upgrading.python_of(environment)
    else:
        after_python = args.after_python
        if not after_python.exists():
            raise ConformanceError(f"--after-python {after_python}: no such interpreter", hint="give the python of the after side's environment, e.g. venv/bin/python")
    plan = upgrading.UpgradePlan(
        out=args.out or Path("runs") / f"upgrade-{_dt.datetime.now():%Y%m%d-%H%M%S}",
        pythons={"before": Path(sys.executable), "after": after_python}, run_options=list(args.run_options), references=references,
        strategies=config.strategies, targets=list(args.to), command=["conformance", *args.argv], bench=args.bench,
        bench_max_time=args.bench_max_time, manifest=args.manifest, fail_on=list(args.fail_on), seed=run_args.seed,
    )
    try:
        return upgrading.upgrade(plan, resume=args.resume, overwrite=args.overwrite, log=log)
    except KeyboardInterrupt:
        print(f"\ninterrupted; carry on with: conformance {' '.join(args.argv)} --resume" + ("" if args.out else f" --out {plan.out}"), file=sys.stderr)
        return 130


def _command_list(args: argparse.Namespace) -> int:
    if args.what == "models" and args.zoo in ("timm-families", "torchvision-families"):
        from conformance.zoo.families import timm_families, torchvision_families

        chosen = set(list_models(zoo=args.zoo, include=args.include, exclude=args.exclude))
        library, families, size = (("timm", timm_families, "its default input size") if args.zoo == "timm-families"
                                   else ("torchvision", torchvision_families, "the zoo's input for its group"))
        print(f"rule: from each {library} model module, the architecture with the fewest parameters (meta device), at {size}")
        print(f"{'module':24s} {'model':40s} {'params':>10s} {'of':>4s}  input")
        for choice in families():
            if choice.reference in chosen:
                skipped = f"  ({len(choice.unbuildable)} not buildable on meta)" if choice.unbuildable else ""
                print(f"{choice.module:24s} {choice.reference:40s} {choice.params / 1e6:9.2f}M {choice.candidates:4d}  {'x'.join(map(str, choice.input_size))}{skipped}")
    elif args.what == "models":
        for reference in list_models(zoo=args.zoo, include=args.include, exclude=args.exclude):
            print(reference)
    elif args.what == "strategies":
        for name, status in available_strategies().items():
            kind = "" if name in CORE_STRATEGIES else "  (variant)" if "+" in name else "  (another library's)"
            print(f"{name:22s} {status}{kind}")
    elif args.what == "checks":
        for name in ALL_CHECKS:
            profiles = ", ".join(profile for profile, names in PROFILES.items() if name in names and profile != "all")
            print(f"{name:18s} [{profiles}] {describe(name)}")
    else:
        if not args.model:
            raise ConformanceError("'list layers' needs a model", hint="conformance list layers torchvision:resnet18")
        spec = resolve_model(args.model)
        model = build_model(spec=spec, seed=0)
        if args.nodes:
            from conformance.truth.expressible import node_listing

            print(node_listing(model, spec).to_string(index=False))
            return 0
        for layer_set in LAYER_SETS:
            print(f"{layer_set}: {' '.join(resolve_layers(model, spec, [layer_set]))}")
    return 0


def _run_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """``[tool.conformance]`` keys as ``conformance run`` destinations (``models`` is ``--model``)."""
    return {"model" if key == "models" else key.replace("-", "_"): value for key, value in options.items()}


def run_arguments(options: Mapping[str, Any]) -> argparse.Namespace:
    """The arguments of a plain ``conformance run`` under ``[tool.conformance]`` ``options``."""
    return _parser(_run_defaults(options)).parse_args(["run"])


def _fuzz_share(models: int, seed: int) -> dict[str, Any]:
    from conformance.running.fuzz import run_fuzz

    torch.set_num_threads(1)
    return run_fuzz(models=models, seed=seed)


def _command_fuzz(args: argparse.Namespace) -> int:
    """Judge generated models; exit 1 on any disagreement, crash or unexplained row."""
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise ConformanceError("conformance fuzz needs Hypothesis", hint="pip install 'feature-conformance[fuzz]'") from None
    from conformance.running.fuzz import merge_summaries, write_report

    if args.models < 1 or args.jobs < 1:
        raise ConformanceError(f"--models {args.models} --jobs {args.jobs}: both must be at least 1", hint="e.g. --models 2000 --jobs 2")
    out = args.out or Path("runs") / f"fuzz-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if (out / "summary.json").exists() and not args.overwrite:
        raise ConformanceError(f"{out / 'summary.json'} already exists", hint="pass --overwrite to replace it, or choose another --out")
    shares = [args.models // args.jobs + (index < args.models % args.jobs) for index in range(args.jobs)]
    if args.jobs == 1:
        summaries = [_fuzz_share(args.models, args.seed)]
    else:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(_fuzz_share, shares, [args.seed + index for index in range(args.jobs)]))
    summary = merge_summaries(summaries)
    write_report(summary, out)
    counts = ", ".join(f"{summary[key]} {key}" for key in ("models", "rows", "disagreements", "crashes", "unexplained", "misnamed"))
    print(f"{counts} in {summary['seconds']:.0f} s; {out / 'summary.json'}")
    for failure in summary["minimal_failures"]:
        print(f"\n{failure['found']}\n{failure['source']}")
    return 1 if summary["minimal_failures"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conformance`` console script."""
    try:
        config = load_config(Path.cwd() / "pyproject.toml")
    except ConformanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(_run_defaults(config.options))
    args, unknown = parser.parse_known_args(argv)
    if args.command == "upgrade":
        args.run_options, args.run_defaults = unknown, _run_defaults(config.options)  # the sides' run options
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv  # the command as given, written into the run metadata
    try:
        commands = {"run": _command_run, "bench": _command_bench, "matrix": _command_matrix, "report": _command_report, "recommend": _command_recommend,
                    "baseline": _command_baseline, "merge": _command_merge, "manifest": _command_manifest, "diff": _command_diff, "list": _command_list,
                    "fuzz": _command_fuzz, "upgrade": _command_upgrade, "precision": _command_precision}
        return commands[args.command](args)
    except ConformanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went into a command that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
