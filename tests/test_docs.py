"""The documentation site builds strictly (a broken link or page fails), has a page per topic,
and its generated pages say what the code says; the README stays a landing page."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli import _parser
from strategies import list_strategies

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("getting-started", "usage", "findings", "strategies", "checks", "diagnoses", "cli", "pytest", "costs", "reports",
         "upgrades", "speed", "development")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_the_site_has_a_page_per_topic_and_per_strategy(site):
    for page in PAGES:
        assert (site / page / "index.html").exists(), page
    for strategy in list_strategies():
        page = site / "strategies" / strategy.replace("+", "-") / "index.html"
        assert page.exists(), strategy
        assert f"<code>{strategy}</code>" in page.read_text()


def test_the_cli_reference_is_the_parser(site):
    text = (site / "cli" / "index.html").read_text()
    parser = _parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    for command, sub in commands.items():
        assert f"conformance {command}" in text, command
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, (command, flag)


def test_the_catalogues_are_generated_from_the_registry_and_the_diagnoses_module(site):
    from conformance.judging.profiles import ALL_CHECKS

    checks = (site / "checks" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in checks for name in ALL_CHECKS)
    diagnoses = (site / "diagnoses" / "index.html").read_text()
    for name in ("inplace_aliasing", "children_not_chained", "dead_code_eliminated", "reused_module", "rng_shifted", "unexplained"):
        assert f"<code>{name}</code>" in diagnoses, name
    assert "<!--" not in checks + diagnoses  # every marker replaced


def test_negative_control_a_broken_link_fails_the_strict_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    (tmp_path / "docs" / "getting-started.md").open("a").write("\n[nowhere](no-such-page.md)\n")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                           capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert built.returncode != 0 and "no-such-page.md" in built.stderr, built.stderr[-2000:]


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    text = "\n".join(lines)
    for link in ("docs/getting-started.md", "docs/strategies/index.md", "docs/cli.md", "docs/pytest.md", "reports/README.md"):
        assert f"]({link})" in text and (ROOT / link).exists(), link
