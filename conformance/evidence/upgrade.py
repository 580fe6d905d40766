"""``conformance upgrade``: one run under the installed packages and under candidate versions, and
what changed for the users of each strategy.

* The **before** side is this environment. The **after** side is a virtual environment built
  with `uv <https://docs.astral.sh/uv/>`_: every distribution installed here, pinned as it is
  installed (``name==version``; an editable install stays editable on the same source), except
  the packages named with ``--to`` and the dependencies that only they need (torch's
  ``nvidia-*`` and ``triton``), which follow them. ``--after-python`` takes an existing
  environment instead.
* Built environments are kept under ``--env-cache``, keyed by their requirements: a rerun with
  the same pins builds nothing. A build that fails leaves nothing behind.
* Both sides run the same ``conformance run`` (and, asked for, ``bench`` and ``manifest save``)
  from this directory, so ``[tool.conformance]`` applies to both. An interrupted upgrade carries
  on with ``--resume``.
* ``OUT`` gets a README for users of each strategy, the conformance, cost and manifest diffs, and
  both sides' rows and package lists; the full run directories go to ``OUT/work`` (not meant to
  be committed: it holds its own ``.gitignore``).
* The exit code is ``conformance diff``'s: 1 when the conformance or the cost diff has a
  regression, 0 otherwise; bad input exits 2.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import unquote, urlparse

import pandas as pd
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from conformance.core.errors import ConformanceError
from conformance.evidence.diff import Diff, diff, load_side, markdown, parse_fail_on, plain_text, save_baseline
from conformance.evidence.manifest import ManifestDiff, diff_manifests, load_manifest
from conformance.evidence.reports import markdown_table
from conformance.evidence.results import write_document

__all__ = ["OWN_RUN_OPTIONS", "UpgradePlan", "after_requirements", "build_environment", "default_env_cache", "find_uv", "installed_distributions",
           "parse_targets", "python_of", "upgrade"]

#: Run options that belong to the upgrade itself, not to the sides' runs.
OWN_RUN_OPTIONS = ("--out", "--resume", "--overwrite", "--redo", "--shard")
_SIDES = ("before", "after")
_PLAN = "upgrade.json"
_PROJECT = "feature-conformance"


def parse_targets(texts: Sequence[str], *, installed: dict[str, importlib.metadata.Distribution]) -> dict[str, str]:
    """``--to`` values as ``{canonical name: 'name==version'}``: exact versions of installed packages."""
    targets: dict[str, str] = {}
    for text in texts:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            raise ConformanceError(f"cannot read --to {text!r}", hint="write NAME==VERSION, e.g. --to torchvision==0.29.2") from None
        specifiers = list(requirement.specifier)
        if requirement.url or requirement.marker or len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            raise ConformanceError(f"--to {text!r} is not one exact version", hint=f"write {requirement.name}==VERSION: an upgrade compares two exact sets of packages")
        name = canonicalize_name(requirement.name)
        if name not in installed:
            import difflib

            close = difflib.get_close_matches(name, list(installed), n=3, cutoff=0.6)
            raise ConformanceError(f"--to {text!r}: {requirement.name} is not installed here",
                                   hint=f"did you mean {', '.join(close)}?" if close else "an upgrade moves packages this environment has; install it first")
        if name in targets:
            raise ConformanceError(f"--to names {requirement.name} twice", hint="give each package one version")
        targets[name] = f"{requirement.name}=={specifiers[0].version}"
    return targets


def installed_distributions() -> dict[str, importlib.metadata.Distribution]:
    """The distributions this interpreter imports, by canonical name (the first on ``sys.path``)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), distribution)
    return found


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    return requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in ["", *extras])


def _dependencies(installed: dict[str, importlib.metadata.Distribution]) -> dict[str, set[str]]:
    """What each installed distribution requires on this platform, with the extras that installed
    distributions ask of it (torch asks ``cuda-toolkit[cublas,...]``); an extra nothing asks for
    is left out."""
    asked = {name: [Requirement(text) for text in distribution.requires or []] for name, distribution in installed.items()}
    extras: dict[str, set[str]] = {name: set() for name in installed}
    changed = True
    while changed:
        changed = False
        for name, requirements in asked.items():
            for requirement in requirements:
                wanted = {canonicalize_name(extra) for extra in requirement.extras}
                target = canonicalize_name(requirement.name)
                if target in extras and _applies(requirement, extras[name]) and not wanted <= extras[target]:
                    extras[target] |= wanted
                    changed = True
    return {name: {canonicalize_name(r.name) for r in requirements if canonicalize_name(r.name) in installed and _applies(r, extras[name])}
            for name, requirements in asked.items()}


def released_with(targets: Sequence[str], installed: dict[str, importlib.metadata.Distribution]) -> set[str]:
    """The named packages and, recursively, the installed dependencies that only released packages need."""
    requires = _dependencies(installed)
    released = set(targets)
    while True:
        needed = {dependency for name in released for dependency in requires[name]} - released
        followers = {dependency for dependency in needed
                     if all(name in released for name, wants in requires.items() if dependency in wants)}
        if not followers:
            return released
        released |= followers


def requirement_line(distribution: importlib.metadata.Distribution) -> str:
    """How to install ``distribution`` again as it is installed: ``name==version``, an editable
    source, a local directory, a VCS commit or an archive URL (PEP 610 ``direct_url.json``)."""
    name, version = distribution.metadata["Name"], distribution.version
    text = distribution.read_text("direct_url.json")
    if not text:
        return f"{name}=={version}"
    direct = json.loads(text)
    url = direct["url"]
    if "dir_info" in direct:
        path = unquote(urlparse(url).path)
        return f"-e {path}" if direct["dir_info"].get("editable") else f"{name} @ {url}"
    if "vcs_info" in direct:
        vcs = direct["vcs_info"]
        return f"{name} @ {vcs['vcs']}+{url}@{vcs['commit_id']}"
    return f"{name} @ {url}"


def _own_source() -> Path | None:
    """This project's source tree when it runs from one (an editable install or a checkout)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "strategies").is_dir() else None


def after_requirements(targets: dict[str, str], *, installed: dict[str, importlib.metadata.Distribution]) -> list[str]:
    """The after side's requirements: the targets, and every other installed distribution as
    installed; this project from the source tree it runs from, so both sides run the same code."""
    released = released_with(list(targets), installed)
    source = _own_source()
    lines = []
    for name, distribution in sorted(installed.items()):
        if name in released:
            continue
        lines.append(f"-e {source}" if name == _PROJECT and source else requirement_line(distribution))
    return [*targets.values(), *lines]


def find_uv(explicit: Path | None) -> Path:
    """The ``uv`` executable: ``--uv``, else the one on ``PATH``, else the one the ``uv`` package carries."""
    if explicit is not None:
        if shutil.which(str(explicit)) is None:
            raise ConformanceError(f"--uv {explicit}: no such executable", hint="give the path of uv, or leave --uv out to use the one on PATH")
        return explicit
    found = shutil.which("uv")
    if found:
        return Path(found)
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        raise ConformanceError("conformance upgrade builds the after side with uv, which is not installed",
                               hint="pip install 'feature-conformance[upgrade]' (or pip install uv), or give an existing environment with --after-python") from None


def default_env_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "feature-conformance" / "upgrade-envs"


def _environment_key(requirements: Sequence[str]) -> str:
    identity = "\n".join([sys.version, platform.machine(), platform.system(), *requirements])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def python_of(environment: Path) -> Path:
    return environment / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _failure(targets: Sequence[str], output: str) -> ConformanceError:
    """uv's failure as a message naming what failed, with a hint for its kind."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    text = "\n  ".join(lines[-12:])
    joined = output.lower()
    missing = [target for target in targets if target.split("==")[0].lower() in joined
               and any(word in joined for word in ("no version", "not found", "was not found", "no matching distribution"))]
    if "no solution found" in joined and missing:
        names = " ".join(target.split("==")[0] for target in missing)
        hint = (f"the registry may not serve {', '.join(missing)}: `pip index versions {names}` lists what it has "
                "(uv reads its indexes from UV_INDEX_URL, UV_EXTRA_INDEX_URL and uv.toml)")
    elif "no solution found" in joined:
        hint = ("the versions asked for conflict with packages kept as installed: name every package that must move with them, "
                "e.g. --to torch==2.15.0 --to torchvision==0.29.2")
    else:
        hint = "uv's own message is above; rerun when the cause is fixed (nothing was kept)"
    return ConformanceError(f"uv could not build the after side with {', '.join(targets)}:\n  {text}", hint=hint)


def build_environment(*, requirements: Sequence[str], targets: Sequence[str], cache: Path, uv: Path,
                      log: Callable[[str], None]) -> Path:
    """A virtual environment holding ``requirements``, built with uv, or the one built before
    with the same requirements; a failed build is removed."""
    environment = cache / _environment_key(requirements)
    done = environment / "conformance-requirements.txt"
    if done.exists():
        log(f"after side: reusing {environment}")
        return environment
    shutil.rmtree(environment, ignore_errors=True)  # an earlier build that did not finish
    cache.mkdir(parents=True, exist_ok=True)
    log(f"after side: building {environment} with uv ({len(requirements)} requirements)")
    requirements_file = cache / f"{environment.name}.requirements.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    try:
        for command in ([str(uv), "venv", "--quiet", "--python", sys.executable, str(environment)],
                        [str(uv), "pip", "install", "--python", str(python_of(environment)), "-r", str(requirements_file)]):
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise _failure(targets, completed.stderr + completed.stdout)
    except BaseException:
        shutil.rmtree(environment, ignore_errors=True)
        requirements_file.unlink(missing_ok=True)
        raise
    requirements_file.replace(done)  # written last: its presence says the build finished
    return environment


@dataclass
class UpgradePlan:
    """What an upgrade runs: the sides' interpreters, the run options, and the extras asked for."""

    out: Path
    pythons: dict[str, Path]
    run_options: list[str]
    references: list[str]
    strategies: list[str]
    targets: list[str]
    command: list[str]
    bench: bool = False
    bench_max_time: float = 10.0
    manifest: bool = False
    fail_on: list[str] = field(default_factory=list)
    seed: int = 0

    def identity(self) -> dict:
        """What must match for ``--resume`` to carry on with an earlier upgrade in ``out``."""
        return {"run_options": self.run_options, "targets": self.targets, "bench": self.bench, "manifest": self.manifest,
                "after_python": str(self.pythons["after"])}


def _prepare_out(plan: UpgradePlan, *, resume: bool, overwrite: bool) -> None:
    marker = plan.out / _PLAN
    if marker.exists() and not (resume or overwrite):
        raise ConformanceError(f"{plan.out} already holds an upgrade", hint="pass --resume to carry on with it, --overwrite to replace it, or another --out")
    if marker.exists() and resume:
        earlier = json.loads(marker.read_text()).get("identity")
        if earlier != plan.identity():
            raise ConformanceError(f"{plan.out} holds an upgrade with other options ({earlier})", hint="resume with the same options, or choose another --out")
    if marker.exists() and overwrite:
        shutil.rmtree(plan.out)
    if plan.out.exists() and not marker.exists() and any(plan.out.iterdir()):
        raise ConformanceError(f"{plan.out} is not empty and holds no upgrade", hint="choose a new or empty --out")
    work = plan.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("# the sides' full run directories (rows are in ../before and ../after)\n*\n")
    marker.write_text(json.dumps({"identity": plan.identity(), "command": plan.command,
                                  "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")


def _conformance(python: Path, arguments: Sequence[str], *, log_file: Path) -> int:
    """``python -m conformance ARGUMENTS``: its progress on this terminal, its output in ``log_file``."""
    with log_file.open("a") as handle:
        handle.write(f"$ {python} -m conformance {' '.join(arguments)}\n")
        handle.flush()
        return subprocess.run([str(python), "-m", "conformance", *arguments], stdout=handle, stderr=None if sys.stderr.isatty() else handle).returncode


_PACKAGES_SCRIPT = ("import importlib.metadata as m\n"
                    "for name, version in sorted({(d.metadata['Name'], d.version) for d in m.distributions() if d.metadata['Name']}, key=lambda p: p[0].lower()):\n"
                    "    print(f'{name}=={version}')\n")


def _run_side(plan: UpgradePlan, side: str, *, log: Callable[[str], None]) -> None:
    python, work, keep = plan.pythons[side], plan.out / "work" / side, plan.out / side
    work.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    log_file = keep / "log.txt"
    packages = subprocess.run([str(python), "-c", _PACKAGES_SCRIPT], capture_output=True, text=True)
    if packages.returncode != 0:
        raise ConformanceError(f"the {side} side's interpreter {python} does not run: {packages.stderr.strip()[-300:]}",
                               hint="give a working Python environment with --after-python")
    (keep / "packages.txt").write_text(packages.stdout)
    run = work / "run"
    resume = ["--resume"] if (run / "results.csv").exists() else []
    steps = [("run", ["run", *plan.run_options, "--out", str(run), *resume])]
    models = [option for reference in plan.references for option in ("--model", reference)]
    if plan.bench:
        steps.append(("bench", ["bench", *models, "--layers", "@stages", "--strategies", *plan.strategies, "--seed", str(plan.seed),
                                "--max-time", f"{plan.bench_max_time:g}", "--out", str(work / "bench"), "--overwrite"]))
    if plan.manifest:
        steps.append(("manifest", ["manifest", "save", *models, "--seed", str(plan.seed), "--out", str(keep / "manifest.json.gz")]))
    for name, arguments in steps:
        if (work / f".{name}-done").exists():
            continue
        log(f"{side}: conformance {' '.join(arguments)}")
        code = _conformance(python, arguments, log_file=log_file)
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            raise ConformanceError(f"the {side} side's 'conformance {name}' exited {code}", hint=f"its output is in {log_file}; fix the cause and rerun with --resume")
        (work / f".{name}-done").touch()
    save_baseline(source=run, out=keep / "rows.json.gz")
    if plan.bench:
        save_baseline(source=work / "bench", out=keep / "costs.json.gz")


def _packages(path: Path) -> dict[str, str]:
    pairs = (line.split("==", 1) for line in path.read_text().splitlines() if "==" in line)
    return {canonicalize_name(name): version for name, version in pairs}


def _moved(out: Path) -> list[tuple[str, str, str]]:
    before, after = _packages(out / "before" / "packages.txt"), _packages(out / "after" / "packages.txt")
    return [(name, before.get(name, "-"), after.get(name, "-")) for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def _per_strategy(conformance: Diff, before: pd.DataFrame, after: pd.DataFrame,
                  cost_rows: tuple[pd.DataFrame, pd.DataFrame] | None) -> pd.DataFrame:
    """One row per strategy: verdicts on both sides, the changes by kind, and the overhead ratio."""
    strategies = list(dict.fromkeys([*before["strategy"], *after["strategy"]]))
    kinds = conformance.changes.groupby(["strategy", "kind"]).size() if not conformance.changes.empty else pd.Series(dtype=int)

    def count(strategy: str, *names: str) -> int:
        return int(sum(kinds.get((strategy, name), 0) for name in names))

    def passing(frame: pd.DataFrame, strategy: str) -> str:
        rows = frame[frame["strategy"] == strategy]
        return f"{int((rows['status'] == 'pass').sum())}/{len(rows)}"

    table = []
    for strategy in strategies:
        row = {"strategy": strategy, "pass before": passing(before, strategy), "pass after": passing(after, strategy),
               "regressed": count(strategy, "regressed", "new_failure"), "fixed": count(strategy, "fixed"),
               "other verdicts": count(strategy, "status"), "diagnoses": count(strategy, "diagnosis"),
               "names, shapes": count(strategy, "shape_or_dtype"), "values (drift)": count(strategy, "drift"),
               "one side only": count(strategy, "only_in_base", "only_in_new")}
        if cost_rows is not None:
            row["overhead after/before"] = _overhead(strategy, *cost_rows)
        table.append(row)
    return pd.DataFrame(table)


def _overhead(strategy: str, before: pd.DataFrame, after: pd.DataFrame) -> str:
    """The median ratio of a strategy's overhead after/before over its models, and in how many
    models the two 95 % intervals separate."""
    if before.empty or after.empty:
        return "not measured"
    pick = lambda frame: frame[(frame["strategy"] == strategy) & (frame["metric"] == "overhead") & (frame["status"] == "ok")]  # noqa: E731
    merged = pick(before).merge(pick(after), on=["model", "layers"], suffixes=("_b", "_a"))
    if merged.empty:
        return "not measured"
    ratios = merged["value_a"] / merged["value_b"]
    apart = ((merged["ci_low_a"] > merged["ci_high_b"]) | (merged["ci_high_a"] < merged["ci_low_b"])).sum()
    return f"{ratios.median():.3f} [{ratios.min():.3f}, {ratios.max():.3f}]; intervals apart in {int(apart)}/{len(merged)}"


def _manifest_summary(result: ManifestDiff | None) -> str:
    if result is None:
        return "not taken (pass --manifest)"
    if not result.changes:
        return "no difference"
    counts = pd.DataFrame(result.changes)["what"].value_counts()
    return ", ".join(f"{count} {what}" for what, count in counts.items())


def _readme(plan: UpgradePlan, *, conformance: Diff, per_strategy: pd.DataFrame, costs: Diff | None, manifest: ManifestDiff | None,
            moved: list[tuple[str, str, str]], regressions: int, metadata: dict) -> str:
    title = ", ".join(f"{name} {a} -> {b}" for name, a, b in moved if name in {t.split("==")[0].lower() for t in plan.targets}) or \
        ", ".join(f"{name} {a} -> {b}" for name, a, b in moved[:4]) or "no package moved"
    changes = conformance.changes
    verdict = ("**No regression.**" if not regressions else f"**{regressions} regression(s).**") + (
        " Every cell has the same verdict and diagnosis on both sides." if changes.empty else
        " Changes by kind: " + ", ".join(f"{count} {kind}" for kind, count in changes["kind"].value_counts().items()) + ".")
    machine = metadata.get("machine_info", {})
    lines = [
        f"# Upgrade: {title}", "",
        verdict, "",
        f"Made by `{' '.join(plan.command)}`"
        f" on {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores, {machine.get('torch_threads', '?')} torch threads),"
        f" {_dt.date.today().isoformat()}; both sides on this machine, one after the other. Exit code {1 if regressions else 0}"
        " (1 when the conformance or the cost diff has a regression).", "",
        "## What changed for users of each strategy", "",
        "Verdicts are the cells' statuses (model, strategy, layer, check); `diagnoses` counts failing cells whose named cause changed;"
        " `values (drift)` counts cells whose error against the oracle grew beyond float noise (the diff's drift bound, in units of"
        " the feature's scale); `names, shapes` counts `shape` and `dtype` cells that changed.", "",
        markdown_table(per_strategy), "",
        "## Everything compared", "",
        "| what | result | file |", "| --- | --- | --- |",
        f"| conformance rows | {len(conformance.regressions)} regression(s), {len(changes)} change(s) | `conformance.txt`, `conformance.md` |",
    ]
    if costs is not None:
        lines.append(f"| costs (`conformance bench`, `@stages`) | {len(costs.regressions)} regression(s) beyond the intervals, limits "
                     f"{' '.join(plan.fail_on)} | `costs.txt`, `costs.md` |")
    lines.append(f"| manifest: module paths, FX nodes, feature_info, shapes, fingerprints | {_manifest_summary(manifest)} | "
                 f"{'`manifest.txt`' if manifest is not None else '-'} |")
    table = ["| package | before | after |", "| --- | --- | --- |", *[f"| {name} | {a} | {b} |" for name, a, b in moved]] if moved else ["No package differs."]
    lines += ["", "## Packages that differ", "", *table, "",
              "Every other package is the same on both sides (`before/packages.txt`, `after/packages.txt`).", "",
              "## Files", "",
              "- `before/`, `after/`: each side's rows (`rows.json.gz`, a `conformance baseline`), costs (`costs.json.gz`),"
              " manifest (`manifest.json.gz`), packages and log.",
              "- `work/`: the full run directories (not committed); `conformance report work/after/run --out ...` makes a report of one side.",
              "- Diff the sides again: `conformance diff before/rows.json.gz after/rows.json.gz`.", ""]
    for warning in conformance.warnings:
        lines.insert(4, f"> {warning}\n")
    return "\n".join(lines)


def _diff_text(result: Diff) -> str:
    return "".join(f"warning: {warning}\n" for warning in result.warnings) + plain_text(result) + "\n"


def upgrade(plan: UpgradePlan, *, resume: bool, overwrite: bool, log: Callable[[str], None]) -> int:
    """Run both sides and write the report; ``conformance diff``'s exit code."""
    thresholds = [parse_fail_on(text) for text in plan.fail_on]
    _prepare_out(plan, resume=resume, overwrite=overwrite)
    for side in _SIDES:
        _run_side(plan, side, log=log)
    out = plan.out
    sides = {side: load_side(out / side / "rows.json.gz") for side in _SIDES}
    conformance = diff(sides["before"], sides["after"])
    (out / "conformance.txt").write_text(_diff_text(conformance))
    (out / "conformance.md").write_text(markdown(conformance, base="before", new="after"))
    costs, cost_rows = None, None
    if plan.bench:
        cost_sides = {side: load_side(out / side / "costs.json.gz") for side in _SIDES}
        costs = diff(cost_sides["before"], cost_sides["after"], fail_on=thresholds)
        cost_rows = (cost_sides["before"].bench, cost_sides["after"].bench)
        (out / "costs.txt").write_text(_diff_text(costs))
        (out / "costs.md").write_text(markdown(costs, base="before", new="after"))
    manifest = None
    if plan.manifest:
        manifest = diff_manifests(load_manifest(out / "before" / "manifest.json.gz"), load_manifest(out / "after" / "manifest.json.gz"))
        table = pd.DataFrame(manifest.changes).to_string(index=False, max_colwidth=90) if manifest.changes else ""
        (out / "manifest.txt").write_text("\n".join([*manifest.notes, table, f"{len(manifest.changes)} difference(s)"]).strip() + "\n")
    per_strategy = _per_strategy(conformance, sides["before"].results, sides["after"].results, cost_rows)
    moved = _moved(out)
    regressions = len(conformance.regressions) + (len(costs.regressions) if costs is not None else 0)
    (out / "README.md").write_text(_readme(plan, conformance=conformance, per_strategy=per_strategy, costs=costs, manifest=manifest,
                                           moved=moved, regressions=regressions, metadata=sides["after"].metadata))
    write_document(out / "summary.json", {"regressions": regressions, "changes": len(conformance.changes), "moved": moved})
    print(per_strategy.to_string(index=False))
    packages = ", ".join(f"{name} {a} -> {b}" for name, a, b in moved) or "no package moved"
    print(f"\n{packages}\n{regressions} regression(s), {len(conformance.changes)} change(s); the report: {out / 'README.md'}")
    return 1 if regressions else 0
