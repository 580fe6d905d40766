"""Reports: the document from the rows, its findings backed by queries, the offline page in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import costly
import pitfalls
from conformance.bench import BenchConfig, bench
from conformance.publish import write_report
from conformance.reports import findings
from conformance.results import BenchWriter, ResultsWriter, load_results
from conformance.runner import RunConfig, Timings, run
from conformance.zoo import resolve_model


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A conformance run on two pitfall models and a bench on the tower, in one directory."""
    out = tmp_path_factory.mktemp("source")
    metadata = {"run_id": "test", "device": "cpu", "versions": {"torch": "x"}, "command": ["conformance", "run"]}
    specs = [resolve_model(f"{pitfalls.__file__}:{name}") for name in ("inplace_after_tap", "reused_module")]
    writer = ResultsWriter(out, metadata=dict(metadata), resume=False, overwrite=False)
    run(RunConfig(models=specs, layers=["@children"], strategies=["hooks", "hooks+clone", "fx"], checks=["values", "shape", "gradients"]), writer=writer, timings=Timings())
    writer.finish(extra={})
    tower = resolve_model(f"{costly.__file__}:tower")
    bench_writer = BenchWriter(out, metadata=dict(metadata), overwrite=False)
    bench(BenchConfig(models=[tower], requests=[["blocks.1"], ["head"]], strategies=["hooks", "fx"], max_time=1), writer=bench_writer, log=lambda m: None)
    bench_writer.finish(extra={})
    return out


@pytest.fixture(scope="module")
def report(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(sources=[sources], out=out, command="conformance report SOURCE --out OUT")
    return out


def test_report_has_every_section_plot_and_the_data_behind_it(report):
    text = (report / "report.md").read_text()
    for heading in ("## Environment", "## Findings", "## Capability matrix", "## Failing models", "## Value conformance by model family", "## Speed and memory"):
        assert heading in text
    assert "Regenerate with: `conformance report SOURCE --out OUT`" in text
    for plot in ("pass_rates", "overhead", "floor_ratio", "peak_memory"):
        assert (report / f"{plot}.png").read_bytes().startswith(b"\x89PNG")
        assert f"]({plot}.png)" in text
    data = next((report / "data").iterdir())
    assert {"results.csv", "run.json", "results.json", "bench.csv", "bench_samples.csv", "bench.json"} <= {p.name for p in data.iterdir()}
    assert "floor_ratio [95% CI]" in text and "(floor)" in text


def test_every_finding_is_backed_by_the_rows_its_query_selects(sources):
    frame = load_results(sources)
    found = findings(frame)
    assert any("inplace_aliasing" in f.text and "`inplace_after_tap.bn`" in f.text and f.text.startswith("hooks and fx") for f in found), [f.text for f in found]
    for finding in found:
        selected = frame.query(finding.query)
        assert len(selected) == finding.rows and selected["model"].nunique() == finding.models


def test_no_failure_no_finding():
    frame = pd.DataFrame([{"model": "m", "family": "f", "strategy": "s", "layer": "a", "check": "values", "status": "pass", "diagnosis": "", "detail": ""}])
    assert findings(frame) == []
    assert len(findings(frame.assign(status="fail", diagnosis="stale"))) == 1  # the control: one failure, one finding


def test_html_page_is_offline_and_self_contained(report):
    page = (report / "index.html").read_text()
    assert page.count("<table") >= 6 and page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page fetches something from the network"


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no headless Chromium here (apt install chromium)")
def test_html_page_renders_in_a_headless_browser(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    url = (report / "index.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    rendered = re.search(r'data-rendered="tables:(\d+) images:(\d+)/(\d+)"', dom)
    assert rendered, "the page's script did not run"
    tables, loaded, images = map(int, rendered.groups())
    assert tables >= 6 and loaded == images == 4
    shot = tmp_path / "page.png"
    subprocess.run([*flags, "--window-size=1400,2400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2400)
        grey_levels = sum(1 for count in image.convert("L").histogram() if count)
        assert grey_levels > 20, "the screenshot is blank"
