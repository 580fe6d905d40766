"""Run metadata, recorded with every results file (after pytest-benchmark's machine_info)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["environment_changes", "run_metadata"]

_PACKAGES = ("torch", "torchvision", "timm", "torchextractor", "pandas")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit_info() -> dict:
    root = Path(__file__).resolve().parents[2]  # conformance/core/environment.py: the checkout

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"id": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain")), "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None}
    except (OSError, subprocess.SubprocessError):
        return {"id": None, "dirty": None, "branch": None}


def run_metadata(*, device: str, command: list[str], seed: int, threads: int) -> dict:
    """Versions, machine, commit, command line and start time of a run."""
    cuda = torch.cuda.is_available()
    return {
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "seed": seed,
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}, "conformance": _version("feature-conformance")},
        "machine_info": {
            "node": platform.node(),
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "cpu": _cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "python_executable": sys.executable,
            "cuda": torch.version.cuda if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
        },
        "commit_info": _commit_info(),
    }


_MACHINE_KEYS = ("cpu", "cpu_capability", "cpu_count", "torch_threads", "gpu")
_COMPARED_PACKAGES = ("torch", "torchvision", "timm", "torchextractor")


def environment_changes(base: dict, new: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """How two documents' machines and package versions differ: ``{key: (base, new)}`` each.

    Machine keys are compared where both sides record them (older files lack some).
    """
    machines = [document.get("machine_info") or {} for document in (base, new)]
    machine = {key: (machines[0][key], machines[1][key]) for key in _MACHINE_KEYS
               if key in machines[0] and key in machines[1] and machines[0][key] != machines[1][key]}
    versions = [document.get("versions") or {} for document in (base, new)]
    moved = {key: (versions[0].get(key), versions[1].get(key)) for key in _COMPARED_PACKAGES if versions[0].get(key) != versions[1].get(key)}
    return machine, moved
