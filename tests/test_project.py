"""The project's own promises: the README's test command is exactly what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_command.startswith("python3 -m venv .venv") and "pytest" in ci_command
    assert f"```bash\n{ci_command}\n```" in readme


def test_readme_starts_with_the_two_setup_commands():
    blocks = (ROOT / "README.md").read_text().split("```bash\n")[1:3]
    assert "conformance run" in blocks[0] and "pytest" in blocks[1]
