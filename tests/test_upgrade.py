"""``conformance upgrade``: the after side's pins, its uv build (cached, nothing left on failure),
clear errors for bad versions and a missing uv, and the whole command on a small model, with a
planted regression on the after side that it must report and exit 1 on."""

from __future__ import annotations

import json
import os
import site
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.evidence import upgrade as upgrading
from conformance.core.errors import ConformanceError
from tests.test_cli import PITFALLS, conformance


class FakeDistribution:
    """What :mod:`conformance.upgrade` reads of an installed distribution."""

    def __init__(self, name: str, version: str, requires: list[str] | None = None, direct_url: dict | None = None) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.requires = requires
        self._direct_url = direct_url

    def read_text(self, filename: str) -> str | None:
        return json.dumps(self._direct_url) if filename == "direct_url.json" and self._direct_url else None


def installed(*distributions: FakeDistribution) -> dict:
    return {distribution.metadata["Name"]: distribution for distribution in distributions}


TORCH_LIKE = installed(
    FakeDistribution("torch", "2.14.1", ['cuda-toolkit[cublas]==13.0.3; platform_system == "Linux" or platform_system != "Linux"',
                                         "numpy", 'triton~=3.8.0; python_version >= "3"', "nvidia-cudnn"]),
    FakeDistribution("cuda-toolkit", "13.0.3", ['nvidia-cublas==13.1.*; extra == "cublas"', 'nvidia-cufft; extra == "cufft"']),
    FakeDistribution("nvidia-cublas", "13.1.1"),
    FakeDistribution("nvidia-cufft", "12.0"),  # installed, but only behind an extra nobody asks for
    FakeDistribution("nvidia-cudnn", "9.0", ["nvidia-cublas"]),
    FakeDistribution("triton", "3.8.0"),
    FakeDistribution("numpy", "2.3.0"),
    FakeDistribution("pandas", "3.1.1", ["numpy"]),
    FakeDistribution("nnsight", "0.5", ['triton; extra == "vllm"', "torch"]),
)


def test_the_named_packages_take_along_the_dependencies_only_they_need():
    released = upgrading.released_with(["torch"], TORCH_LIKE)
    # cuda-toolkit, and nvidia-cublas through the extra torch asks of it and through nvidia-cudnn;
    # triton, which nnsight wants only under an extra nobody asked for
    assert released == {"torch", "cuda-toolkit", "nvidia-cublas", "nvidia-cudnn", "triton"}
    # control: numpy, which pandas needs as well, stays pinned; so does nvidia-cufft, behind an
    # extra nobody asks for
    lines = upgrading.after_requirements({"torch": "torch==2.15.0"}, installed=TORCH_LIKE)
    assert lines[0] == "torch==2.15.0"
    assert {"numpy==2.3.0", "pandas==3.1.1", "nvidia-cufft==12.0", "nnsight==0.5"} <= set(lines)
    assert not any(line.startswith(("torch==2.14", "triton", "nvidia-cublas", "nvidia-cudnn", "cuda-toolkit")) for line in lines)
    # control: a package that another kept package needs stays pinned
    with_cupy = {**TORCH_LIKE, **installed(FakeDistribution("cupy", "13.0", ["nvidia-cublas"]))}
    assert upgrading.released_with(["torch"], with_cupy) == {"torch", "cuda-toolkit", "nvidia-cudnn", "triton"}


def test_each_distribution_is_pinned_as_it_is_installed():
    cases = [
        (FakeDistribution("six", "1.16.0"), "six==1.16.0"),
        (FakeDistribution("mine", "0.1", direct_url={"url": "file:///src/mine%20pkg", "dir_info": {"editable": True}}), "-e /src/mine pkg"),
        (FakeDistribution("local", "0.1", direct_url={"url": "file:///src/local", "dir_info": {}}), "local @ file:///src/local"),
        (FakeDistribution("tool", "1.0", direct_url={"url": "https://github.com/o/tool", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}),
         "tool @ git+https://github.com/o/tool@abc123"),
        (FakeDistribution("wheel", "1.0", direct_url={"url": "https://example.org/w-1.0-py3-none-any.whl", "archive_info": {}}),
         "wheel @ https://example.org/w-1.0-py3-none-any.whl"),
    ]
    for distribution, line in cases:
        assert upgrading.requirement_line(distribution) == line


def test_this_project_is_installed_from_the_source_it_runs_from():
    lines = upgrading.after_requirements({"torch": "torch==2.15.0"}, installed=upgrading.installed_distributions())
    assert f"-e {Path(upgrading.__file__).resolve().parents[2]}" in lines
    assert not any(line.startswith("feature-conformance==") for line in lines)


@pytest.mark.parametrize("text, message", [
    ("torch>=2.15", "is not one exact version"),
    ("torch", "is not one exact version"),
    ("torch==2.*", "is not one exact version"),
    ("torch==2.15.0; python_version > '3'", "is not one exact version"),
    ("torhc==2.15.0", "torhc is not installed here"),
    ("torch = = 2", "cannot read --to"),
])
def test_bad_targets_are_named_with_a_hint(text, message):
    with pytest.raises(ConformanceError, match=message) as caught:
        upgrading.parse_targets([text], installed=upgrading.installed_distributions())
    assert caught.value.hint
    with pytest.raises(ConformanceError, match="twice"):
        upgrading.parse_targets(["torch==2.15.0", "Torch==2.14.0"], installed=upgrading.installed_distributions())


def fake_uv(tmp_path: Path, *, fail_with: str | None = None) -> tuple[Path, Path]:
    """An executable standing in for uv: it records its calls, and makes the environment's folder
    (``venv``) or fails the install with ``fail_with`` on stderr."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "uv"
    message = tmp_path / "uv-says.txt"
    message.write_text(fail_with or "")
    install = f"cat {message} >&2; exit 1" if fail_with else "exit 0"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> {calls}
        if [ "$1" = venv ]; then for last; do :; done; mkdir -p "$last/bin"; exit 0; fi
        {install}
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, calls


def test_a_built_environment_is_reused_for_the_same_pins(tmp_path):
    uv, calls = fake_uv(tmp_path)
    build = lambda requirements: upgrading.build_environment(  # noqa: E731
        requirements=requirements, targets=["torch==2.15.0"], cache=tmp_path / "envs", uv=uv, log=lambda message: None)
    first = build(["torch==2.15.0", "six==1.16.0"])
    assert (first / "conformance-requirements.txt").read_text() == "torch==2.15.0\nsix==1.16.0\n"
    assert build(["torch==2.15.0", "six==1.16.0"]) == first
    assert len(calls.read_text().splitlines()) == 2  # one venv, one install: the second call built nothing
    # control: other pins are another environment
    assert build(["torch==2.15.0", "six==1.17.0"]) != first
    assert len(calls.read_text().splitlines()) == 4


@pytest.mark.parametrize("uv_says, hint", [
    ("error: No solution found when resolving dependencies:\n  Because there is no version of torch==99.0 and you require torch==99.0, "
     "we can conclude that your requirements are unsatisfiable.", "pip index versions torch"),
    ("error: No solution found when resolving dependencies:\n  Because torchvision==0.29.2 depends on torch==2.15.0 and you require "
     "torch==2.14.1, we can conclude that your requirements are unsatisfiable.", "name every package that must move"),
    ("error: Failed to fetch: `https://pypi.org/simple/torch/`", "nothing was kept"),
])
def test_a_failed_build_says_why_and_leaves_nothing(tmp_path, uv_says, hint):
    uv, _ = fake_uv(tmp_path, fail_with=uv_says)
    target = "torch==99.0" if "99.0" in uv_says else "torchvision==0.29.2"
    with pytest.raises(ConformanceError, match="uv could not build the after side") as caught:
        upgrading.build_environment(requirements=[target, "six==1.16.0"], targets=[target], cache=tmp_path / "envs", uv=uv, log=lambda message: None)
    assert hint in caught.value.hint
    assert uv_says.splitlines()[-1].strip() in str(caught.value)
    assert list((tmp_path / "envs").iterdir()) == []  # no half-built environment, no requirements file


def test_a_missing_uv_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "up"
    result = conformance("upgrade", "--to", "torch==2.15.0", "--uv", str(tmp_path / "no-uv"), "--model", f"{PITFALLS}:plain", "--out", str(out))
    assert result.returncode == 2 and "no such executable" in result.stderr and "hint:" in result.stderr, result.stderr
    monkeypatch.setattr(upgrading.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "uv", None)  # the uv package is not installed either
    result = conformance("upgrade", "--to", "torch==2.15.0", "--model", f"{PITFALLS}:plain", "--out", str(out))
    assert result.returncode == 2 and "uv, which is not installed" in result.stderr and "pip install" in result.stderr, result.stderr
    assert not out.exists()


def test_a_version_the_registry_lacks_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("uv")
    monkeypatch.setenv("UV_OFFLINE", "1")  # no registry: uv knows no version of anything
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    out, envs = tmp_path / "up", tmp_path / "envs"
    result = conformance("upgrade", "--to", "torch==99.0", "--env-cache", str(envs), "--model", f"{PITFALLS}:plain", "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "uv could not build the after side with torch==99.0" in result.stderr and "hint:" in result.stderr, result.stderr
    assert not out.exists() and list(envs.iterdir()) == []


def test_bad_run_options_and_a_missing_side_are_errors_before_anything_is_built(tmp_path):
    result = conformance("upgrade", "--to", "torch==2.15.0", "--model", f"{PITFALLS}:plain", "--checks", "valeus", "--out", str(tmp_path / "up"))
    assert result.returncode == 2 and "unknown check 'valeus'" in result.stderr
    result = conformance("upgrade", "--model", f"{PITFALLS}:plain", "--out", str(tmp_path / "up"))
    assert result.returncode == 2 and "--to" in result.stderr and "--after-python" in result.stderr
    result = conformance("upgrade", "--to", "torch==2.15.0", "--model", f"{PITFALLS}:plain", "--shard", "1/2")
    assert result.returncode == 2 and "does not take --shard" in result.stderr
    assert not (tmp_path / "up").exists()


PLANT = '''\
"""A planted regression: torchvision's create_feature_extractor returns every feature 1 % too large."""
import torchvision.models.feature_extraction as feature_extraction

_original = feature_extraction.create_feature_extractor


def create_feature_extractor(*args, **kwargs):
    extractor = _original(*args, **kwargs)
    forward = extractor.forward
    extractor.forward = lambda *inputs, **keywords: {name: value * 1.01 for name, value in forward(*inputs, **keywords).items()}
    return extractor


feature_extraction.create_feature_extractor = create_feature_extractor
'''


def overlay_environment(path: Path, *, plant: bool) -> Path:
    """A virtual environment that sees this one's packages (an after side with the same versions),
    optionally with :data:`PLANT` imported at every start."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = [entry for entry in site.getsitepackages() if Path(entry).is_dir()]
    (purelib / "overlay.pth").write_text("".join(f"import site; site.addsitedir({entry!r})\n" for entry in ours))
    if plant:
        (purelib / "planted_fault.py").write_text(PLANT)
        (purelib / "zz_planted.pth").write_text("import planted_fault\n")
    return python


def test_the_upgrade_end_to_end_reports_a_planted_regression_and_exits_1(tmp_path):
    arguments = ["--model", f"{PITFALLS}:plain", "--strategies", "hooks", "fx", "--checks", "values", "shape", "--jobs", "1"]
    # control: an after side with the same packages and no fault: no change, exit 0
    same = overlay_environment(tmp_path / "same", plant=False)
    result = conformance("upgrade", "--after-python", str(same), *arguments, "--out", str(tmp_path / "same-up"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (tmp_path / "same-up" / "README.md").read_text()
    assert "**No regression.** Every cell has the same verdict and diagnosis on both sides." in readme
    assert "no change" in (tmp_path / "same-up" / "conformance.txt").read_text()
    # resumed, it runs nothing again and says the same
    again = conformance("upgrade", "--after-python", str(same), *arguments, "--out", str(tmp_path / "same-up"), "--resume", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "same-up" / "README.md").read_text().split("\n## ")[1:] == readme.split("\n## ")[1:]
    refused = conformance("upgrade", "--after-python", str(same), *arguments, "--out", str(tmp_path / "same-up"), cwd=tmp_path)
    assert refused.returncode == 2 and "already holds an upgrade" in refused.stderr

    planted = overlay_environment(tmp_path / "planted", plant=True)
    out = tmp_path / "planted-up"
    result = conformance("upgrade", "--after-python", str(planted), *arguments, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    readme = (out / "README.md").read_text()
    assert "regression(s).**" in readme and "| fx |" in readme
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| hooks |") or line.startswith("| fx |")}
    assert rows["hooks"].split("|")[4].strip() == "0"  # hooks: nothing regressed
    assert int(rows["fx"].split("|")[4]) > 0  # fx: the planted fault
    text = (out / "conformance.txt").read_text()
    assert "regressed" in text and " fx " in text and " hooks " not in text
    for side in ("before", "after"):
        assert (out / side / "rows.json.gz").exists() and "torch==" in (out / side / "packages.txt").read_text()
    assert (out / "work" / ".gitignore").read_text().strip().endswith("*")
    assert json.loads((out / "upgrade.json").read_text())["identity"]["after_python"] == str(planted)
    assert os.path.getsize(out / "conformance.md") > 0
