"""Publishable reports: ``report.md``, an offline ``index.html``, PNG plots and the data behind them.

One document is assembled from the rows, the answer first (which strategy to use for each
need, the capability matrix coloured by pass rate), then the failures by mechanism, the
findings, the failing models, value conformance per model family, the cost tables and the
environment of each source, and rendered twice: as Markdown for a code-hosting site and as a single static HTML
page with sortable tables and the plots inline (no network fetches). The results and
metadata files are copied under ``data/`` (unless the report is written into the run's own
directory) so the report can be rebuilt and checked.

Example::

    >>> write_report(sources=["reports/quick-cpu"], out=Path("reports/quick-cpu/report"), command="conformance report ...")
"""

from __future__ import annotations

import base64
import html
import itertools
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import pandas as pd

from conformance.evidence.bench import FLOOR, FORWARD, REFERENCES
from conformance.core.errors import ConformanceError
from conformance.evidence.reports import answers, capability_matrix, cell_text, cost_tables, failing_models, family_table, findings, headline, hf_readings, markdown_table, model_verdicts
from conformance.evidence.results import BENCH_CSV, BENCH_JSON, RESULTS_CSV, RESULTS_JSON, RUN_JSON, SAMPLES_CSV, load_bench, load_results, read_metadata, strategy_order

__all__ = ["Sources", "load_sources", "write_report"]

_DATA_FILES = (RESULTS_CSV, RESULTS_JSON, RUN_JSON, BENCH_CSV, SAMPLES_CSV, BENCH_JSON)


@dataclass
class Sources:
    """The rows and metadata of one or more result directories."""

    directories: list[Path]
    results: pd.DataFrame
    bench: pd.DataFrame
    metadata: list[tuple[Path, dict]]


def load_sources(paths: Sequence[str | Path]) -> Sources:
    """Conformance rows (``results.csv``) and cost rows (``bench.csv``) of each directory given."""
    directories, results, bench, metadata = [], [], [], []
    for given in paths:
        directory = Path(given)
        directory = directory.parent if directory.is_file() else directory
        has_results, has_bench = (directory / RESULTS_CSV).exists(), (directory / BENCH_CSV).exists()
        if not (has_results or has_bench):
            raise ConformanceError(f"no results at {given}", hint="give directories written by 'conformance run' or 'conformance bench'")
        directories.append(directory)
        if has_results:
            results.append(load_results(directory))
        if has_bench:
            bench.append(load_bench(directory)[0])
        metadata += read_metadata(directory)
    concat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return Sources(directories, concat(results), concat(bench), metadata)


# -- the document ----------------------------------------------------------------------

Block = Union[str, pd.DataFrame, "Image", "Code"]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _environment(sources: Sources) -> pd.DataFrame:
    lines = []
    for path, meta in sources.metadata:
        versions, machine, commit = meta.get("versions", {}), meta.get("machine_info", {}), meta.get("commit_info", {})
        lines.append({
            "source": f"{path.parent.name}/{path.name}",
            "date": meta.get("datetime", ""),
            "device": meta.get("device", ""),
            "torch": versions.get("torch"), "torchvision": versions.get("torchvision"), "timm": versions.get("timm"),
            "torchextractor": versions.get("torchextractor"), "python": versions.get("python"),
            "cpu": machine.get("cpu"), "threads": machine.get("torch_threads"), "gpu": machine.get("gpu") or "-",
            "commit": f"{(commit.get('id') or '?')[:10]}{' (dirty)' if commit.get('dirty') else ''}",
            "command": " ".join(meta.get("command", [])),
        })
    return pd.DataFrame(lines)


def _document(sources: Sources, plots: dict[str, Image], command: str) -> tuple[str, list[Section]]:
    frame, bench = sources.results, sources.bench
    title = "Feature-extraction conformance report"
    sections = []
    if not frame.empty:
        models, strategies = frame["model"].nunique(), frame["strategy"].nunique()
        sections.append(Section("What to use", [
            "For each need, the strategy that passes every check of it on the most models, and the query that selects its rows "
            "in the results (`pandas.DataFrame.query`).",
            answers(frame),
        ]))
        sections.append(Section("Capability matrix", [
            "Checks by strategies; each cell counts the models on which the strategy passes the check "
            "(a model takes the worst status among its rows); in the HTML page each cell is coloured by its pass rate, "
            "from red (none) to green (all); `n/a`: no model has a verdict.",
            capability_matrix(frame).rename_axis(columns=None).reset_index(),
            plots.get("pass_rates", ""),
        ]))
        sections.append(Section("Headline", [
            "Failures by the mechanism their diagnosis measured; an unexplained failure is one no mechanism reproduces.",
            headline(frame),
        ]))
        sections.append(Section("Findings", [
            f"{len(frame)} rows: {models} models, {strategies} strategies, {frame['check'].nunique()} checks. "
            "Each finding names the query that selects its rows in the results (`pandas.DataFrame.query`).",
            pd.DataFrame([{"finding": f.text, "models": f.models, "rows": f.rows, "query": f.query} for f in findings(frame)]),
        ]))
        sections.append(Section("Failing models", ["Every cell of the matrix with failing or erring models.", failing_models(frame)]))
        sections.append(Section("Value conformance by model family", [
            "Layers whose features equal the oracle's true activation, over layers judged.", family_table(frame).rename_axis(columns=None).reset_index(),
        ]))
        readings = hf_readings(frame)
        if not readings.empty:
            sections.append(Section("Hugging Face: what hidden_states and out_features hold", [
                "Per model and module: the entry users read as its output (`hidden_states[0]` the embeddings', `hidden_states[i]` the "
                "encoder's `i`-th layer's, `last_hidden_state` the final norm's; the backbone's `out_features` stage of the same index), "
                "and what `hf-hidden-states` and `hf-backbone` measured it to be: the module's output, or what the diagnosis "
                "reproduced (`strategy == 'hf-hidden-states' and check == 'values'`).",
                readings,
            ]))
    if not bench.empty:
        blocks: list[Block] = [
            "Latency per call under `torch.no_grad()`, interleaved with the plain forward `(forward)`, the "
            "floor `(floor)` (the forward stopped once every requested layer has returned) and the op-level "
            "oracle `(oracle)` (the pass that records every op and clones the requested ones). Ratios are medians "
            "of per-round ratios with 95 % intervals; strategies that share a rank are indistinguishable."
        ]
        for (model, layers), (table, notes) in cost_tables(bench).items():
            blocks += [f"**{model}** `[{layers}]`", table] + ([Code("\n".join(notes))] if notes else [])
        blocks += [plots[name] for name in ("overhead", "floor_ratio", "peak_memory") if name in plots]
        sections.append(Section("Speed and memory", blocks))
    sections.append(Section("Environment", [f"Regenerate with: `{command}`", _environment(sources)]))
    return title, sections


# -- plots ---------------------------------------------------------------------------------


def _plots(sources: Sources, out: Path) -> dict[str, Image]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, Image] = {}

    def save(figure: "plt.Figure", name: str, caption: str) -> None:
        path = out / f"{name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        made[name] = Image(path, caption)

    if not sources.results.empty:
        verdicts = model_verdicts(sources.results).merge(sources.results[["model", "family"]].drop_duplicates(), on="model")
        judged = verdicts[verdicts["status"].isin(["pass", "fail", "error"])]
        if not judged.empty:
            rates = judged.assign(passed=judged["status"] == "pass").pivot_table(index="strategy", columns="family", values="passed", aggfunc="mean")
            rates = rates.reindex([s for s in strategy_order(sources.results["strategy"]) if s in rates.index])
            figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(rates.columns), 0.9 + 0.4 * len(rates)))
            colours = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")  # a cell with no verdict: grey, n/a
            image = axes.imshow(rates.values, cmap=colours, vmin=0, vmax=1, aspect="auto")
            axes.set_xticks(range(len(rates.columns)), rates.columns, rotation=45, ha="right")
            axes.set_yticks(range(len(rates)), rates.index)
            for i, j in itertools.product(range(rates.shape[0]), range(rates.shape[1])):
                value = rates.values[i, j]
                axes.text(j, i, "n/a" if math.isnan(value) else f"{value:.0%}", ha="center", va="center", fontsize=8)
            figure.colorbar(image, ax=axes, label="checks passed (model verdicts)")
            save(figure, "pass_rates", "Pass rate of every check's model verdicts, strategies by model family")
    ok = sources.bench[sources.bench["status"] == "ok"] if not sources.bench.empty else pd.DataFrame()
    if ok.empty:
        return made
    strategies = [s for s in strategy_order(ok["strategy"]) if s not in REFERENCES]
    for metric, name, label in (("overhead", "overhead", "latency / plain forward"), ("peak_memory", "peak_memory", "peak memory of a call (MiB)")):
        data = ok[ok["metric"] == metric]
        order = ([FORWARD, FLOOR] if metric == "peak_memory" else []) + strategies
        figure, axes = plt.subplots(figsize=(1.5 + 0.6 * len(order), 3.6))
        for x, strategy in enumerate(order):
            points = data[data["strategy"] == strategy]
            scale = 2**20 if metric == "peak_memory" else 1
            values = points["value"] / scale
            if metric == "overhead":
                axes.errorbar([x] * len(points), values, yerr=[values - points["ci_low"], points["ci_high"] - values], fmt="o", alpha=0.7, capsize=2)
            else:
                axes.plot([x] * len(points), values, "o", alpha=0.7)
        axes.set_xticks(range(len(order)), order, rotation=45, ha="right")
        axes.set_ylabel(label)
        if metric == "overhead":
            axes.axhline(1.0, color="grey", linewidth=0.8)
        save(figure, name, f"{label}, per strategy; one point per model and layer request")
    latency = ok[ok["metric"] == "latency"].pivot_table(index=["model", "layers"], columns="strategy", values="value")
    if {FORWARD, FLOOR} <= set(latency.columns):
        depth = (latency[FLOOR] / latency[FORWARD]).rename("depth")
        ratios = ok[ok["metric"] == "floor_ratio"].merge(depth.reset_index(), on=["model", "layers"])
        figure, axes = plt.subplots(figsize=(6, 3.8))
        for strategy, points in ratios.groupby("strategy", sort=False):
            axes.plot(points["depth"], points["value"], "o", label=strategy, alpha=0.75)
        axes.axhline(1.0, color="grey", linewidth=0.8)
        axes.set_xlabel("tap depth: floor latency / forward latency")
        axes.set_ylabel("floor ratio")
        axes.legend(fontsize=7, ncol=2)
        save(figure, "floor_ratio", "Floor ratio against tap depth: 1.0 is no wasted work; a strategy that runs the whole model sits at 1/depth")
    return made


# -- rendering ---------------------------------------------------------------------------


def _markdown(title: str, sections: list[Section], out: Path) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, pd.DataFrame):
                parts.append(markdown_table(block) if not block.empty else "_none_")
            elif isinstance(block, Image):
                parts.append(f"![{block.caption}]({block.path.relative_to(out).as_posix()})\n\n_{block.caption}_")
            elif isinstance(block, Code):
                parts.append(f"```\n{block.text}\n```")
            elif block:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 100rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
img { max-width: 100%; border: 1px solid #ddd; } figure { margin: 1rem 0; }
code, pre { background: #f6f6f6; }
"""

# Sorting by clicking a header; and a record of what rendered, for the browser test.
_SCRIPT = """
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0], index = [...th.parentNode.children].indexOf(th);
  const ascending = !th.classList.contains('sorted-asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('sorted-asc', 'sorted-desc'));
  th.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
  const key = row => { const text = row.children[index].textContent.trim(); const number = parseFloat(text);
    return isNaN(number) ? text.toLowerCase() : number; };
  const rows = [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1)) * (ascending ? 1 : -1); });
  rows.forEach(row => body.appendChild(row));
}
function colourByPassRate(table) {
  table.querySelectorAll('td').forEach(td => {
    const match = td.textContent.match(/^(\\d+)\\/(\\d+) pass/);
    if (!match || +match[2] === 0) return;
    const rate = +match[1] / +match[2];
    td.style.backgroundColor = `hsl(${Math.round(120 * rate)}, 65%, 82%)`;  // red 0% .. green 100%
    td.dataset.passRate = rate.toFixed(3);
  });
}
window.addEventListener('load', () => {
  document.querySelectorAll('th').forEach(th => th.addEventListener('click', () => sortTable(th)));
  document.querySelectorAll('table.matrix').forEach(colourByPassRate);
  const tables = [...document.querySelectorAll('table')].filter(t => t.tBodies.length && t.tBodies[0].rows.length).length;
  const images = [...document.images], loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.rendered = `tables:${tables} images:${loaded}/${images.length}`;
});
"""


def _html_text(text: str) -> str:
    """Inline Markdown of the report's sentences: `code` and **bold**."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, pd.DataFrame):
                classes = {"Capability matrix": "matrix", "What to use": "answers"}.get(section.title)  # the matrix's cells coloured by pass rate
                body.append(block.map(cell_text).to_html(index=False, border=0, escape=True, classes=classes) if not block.empty else "<p><em>none</em></p>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.path.read_bytes()).decode()
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            elif isinstance(block, Code):
                body.append(f"<pre>{html.escape(block.text)}</pre>")
            elif block:
                body.append(f"<p>{_html_text(block)}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(*, sources: Sequence[str | Path], out: Path, command: str) -> list[Path]:
    """Write ``report.md``, ``index.html``, the plots and ``data/`` under ``out``; return the files written."""
    loaded = load_sources(sources)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(loaded, out)
    title, sections = _document(loaded, plots, command)
    written = [out / "report.md", out / "index.html"]
    written[0].write_text(_markdown(title, sections, out))
    written[1].write_text(_html(title, sections))
    for index, directory in enumerate(loaded.directories):
        if directory.resolve() == out.resolve():  # the report sits beside its data already
            continue
        target = out / "data" / f"{index}-{directory.resolve().name}"
        target.mkdir(parents=True, exist_ok=True)
        for name in _DATA_FILES:
            if (directory / name).exists() and (directory / name).resolve() != (target / name).resolve():
                shutil.copy2(directory / name, target / name)
                written.append(target / name)
    return written + [image.path for image in plots.values()]
