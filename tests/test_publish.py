"""Reports: the document from the rows, its findings backed by queries, the offline page in a real browser."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import costly
import pitfalls
from conformance.evidence.bench import BenchConfig, bench
from conformance.evidence.publish import write_report
from conformance.evidence.reports import findings
from conformance.evidence.results import BenchWriter, ResultsWriter, load_results
from conformance.running.runner import RunConfig
from conformance.running.schedule import run
from conformance.core.timing import Timings
from conformance.zoo.specs import resolve_model


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
    headings = ["## What to use", "## Capability matrix", "## Headline", "## Findings", "## Failing models",
                "## Value conformance by model family", "## Speed and memory", "## Environment"]
    assert [line for line in text.splitlines() if line.startswith("## ")] == headings  # the answer first, the environment last
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


def _chromium() -> str:
    """Debian's headless Chromium, driven by Playwright; `.ci/run` installs both and sets
    CONFORMANCE_REQUIRE_BROWSER=1, so that in CI this test fails rather than skips without them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "no Chromium here (apt-get install -y chromium)" if not browser else ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "no Playwright here (pip install playwright)"
    if missing:
        if os.environ.get("CONFORMANCE_REQUIRE_BROWSER"):
            pytest.fail(f"{missing}, and CONFORMANCE_REQUIRE_BROWSER is set")
        pytest.skip(missing)
    return browser


def test_html_page_works_offline_in_a_real_browser(report, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True, viewport={"width": 1400, "height": 900}).new_page()
            errors, requests = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((report / "index.html").resolve().as_uri())
            page.wait_for_selector("body[data-rendered]")
            assert errors == [], errors
            assert all(url.startswith(("file:", "data:")) for url in requests), requests

            images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width])")
            assert len(images) == 4 and all(loaded and width > 100 for loaded, width in images), images

            # sorting: a click on the matrix's first header sorts its rows by check name, a second click reverses them
            column = "table.matrix tbody tr td:first-child"
            before = page.eval_on_selector_all(column, "cells => cells.map(c => c.textContent)")
            page.click("table.matrix th:first-child")
            ascending = page.eval_on_selector_all(column, "cells => cells.map(c => c.textContent)")
            page.click("table.matrix th:first-child")
            descending = page.eval_on_selector_all(column, "cells => cells.map(c => c.textContent)")
            assert ascending == sorted(before, key=str.lower) and descending == ascending[::-1] and len(before) >= 3

            # the matrix coloured by pass rate: all-pass cells green, no-pass cells red
            cells = page.eval_on_selector_all("table.matrix td[data-pass-rate]", "cells => cells.map(c => [+c.dataset.passRate, getComputedStyle(c).backgroundColor])")
            colours = {rate: colour for rate, colour in cells}
            assert 1.0 in colours and 0.0 in colours and colours[1.0] != colours[0.0], colours
            green, red = (tuple(map(int, re.findall(r"\d+", colours[rate])[:3])) for rate in (1.0, 0.0))
            assert green[1] > green[0] and red[0] > red[1], (green, red)

            # the answer first: which strategy for each need, whole, and the matrix's top on the first screen
            answer = page.eval_on_selector("table.answers", "t => [t.getBoundingClientRect().top, t.getBoundingClientRect().bottom]")
            matrix_top = page.eval_on_selector("table.matrix", "t => t.getBoundingClientRect().top")
            environment = page.eval_on_selector("xpath=//h2[text()='Environment']", "h => h.getBoundingClientRect().top")
            assert 0 <= answer[0] < answer[1] <= 900 and matrix_top < 900 < environment, (answer, matrix_top, environment)
            needs = page.eval_on_selector_all("table.answers tbody tr td:first-child", "cells => cells.map(c => c.textContent)")
            assert needs == ["values only", "gradients", "train mode", "script", "export"], needs

            shot = tmp_path / "first-screen.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        assert sum(1 for count in image.convert("L").histogram() if count) > 20, "the screenshot is blank"
