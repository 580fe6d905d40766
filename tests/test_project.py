"""The project's own promises: the README's test command is exactly what CI runs, and it
installs the versions the committed baselines and manifests were made with."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_command.startswith(".ci/ensure-chromium && python3 -m venv .venv") and "pytest" in ci_command
    assert f"```bash\n{ci_command}\n```" in readme


def test_ci_fails_rather_than_skips_the_browser_test():
    assert "export CONFORMANCE_REQUIRE_BROWSER=1" in (ROOT / ".ci" / "run").read_text()


def test_readme_starts_with_the_two_setup_commands():
    blocks = (ROOT / "README.md").read_text().split("```bash\n")[1:3]
    assert "conformance run" in blocks[0] and "pytest" in blocks[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {name.lower(): version for name, _, version in (line.partition("==") for line in lines if "==" in line and not line.startswith("#"))}


def test_the_readme_commands_install_under_the_pins():
    blocks = (ROOT / "README.md").read_text().split("```bash\n")[1:3]
    assert all("-c constraints.txt" in block.split("\n")[0] for block in blocks)


@pytest.mark.parametrize("document", ["reports/baselines/quick-fast.json", "reports/manifests/quick.json"])
def test_the_pins_are_the_versions_the_committed_references_were_made_with(document):
    recorded = json.loads((ROOT / document).read_text())
    versions = recorded.get("versions") or recorded["metadata"]["versions"]
    pins = _pins()
    for package in ("torch", "torchvision", "timm", "torchextractor", "pandas"):
        assert pins[package] == versions[package], f"{document} was made with {package} {versions[package]}; constraints.txt pins {pins[package]}: run .ci/repin"
