"""Float noise between machines, measured on this one: manifests taken again under simulated
machines (other thread counts, other CPU vector extensions) and compared fingerprint by
fingerprint with one taken as the machine is.

Each simulated machine is a subprocess with the environment that makes torch, oneDNN and MKL
pick the kernels another CPU would run (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``), and its own thread count. On a CPU without AVX-512 the AVX2
conditions change nothing; that is reported as bitwise equality, not hidden.

Example::

    >>> frame = measure_noise(references=["torchvision:resnet18"], seed=0, workdir=Path("runs/noise"))
    >>> frame[["machine", "largest", "changes"]]
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from conformance.core.errors import ConformanceError
from conformance.evidence.fingerprints import NOISE_BOUND
from conformance.evidence.manifest import diff_manifests, load_manifest

__all__ = ["SIMULATED_MACHINES", "SimulatedMachine", "manifest_on", "measure_noise"]

_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@dataclass(frozen=True)
class SimulatedMachine:
    """Another machine, as far as float arithmetic goes: a thread count and kernel choices."""

    name: str
    threads: int | None = None  # None: the default of this machine
    environment: dict[str, str] = field(default_factory=dict)


SIMULATED_MACHINES = (
    SimulatedMachine("1 thread", threads=1),
    SimulatedMachine("3 threads", threads=3),
    SimulatedMachine("ATen AVX2 kernels", environment={"ATEN_CPU_CAPABILITY": "avx2"}),
    SimulatedMachine("ATen scalar kernels", environment={"ATEN_CPU_CAPABILITY": "default"}),
    SimulatedMachine("oneDNN AVX2", environment={"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    SimulatedMachine("MKL AVX2", environment={"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    SimulatedMachine("an AVX2 CPU, 1 thread", threads=1, environment=_AVX2),
)


def manifest_on(machine: SimulatedMachine, *, references: Sequence[str], seed: int, out: Path) -> dict:
    """The manifest of ``references`` taken in a subprocess on the simulated ``machine``."""
    command = [sys.executable, "-m", "conformance", "manifest", "save", "--out", str(out), "--seed", str(seed)]
    command += [item for reference in references for item in ("--model", reference)]
    command += ["--threads", str(machine.threads)] if machine.threads else []
    done = subprocess.run(command, env={**os.environ, **machine.environment}, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConformanceError(f"taking the manifest on '{machine.name}' failed: {done.stderr.strip()[-500:]}",
                               hint="run the same 'conformance manifest save' by hand to see the whole error")
    return load_manifest(out)


def measure_noise(*, references: Sequence[str], seed: int, workdir: Path, machines: Sequence[SimulatedMachine] = SIMULATED_MACHINES) -> pd.DataFrame:
    """One row per simulated machine: features compared, how many are bitwise equal, the
    largest deviation (in the units of ``NOISE_BOUND``, and as a multiple of it) and where,
    and how many changes a diff would report (0 when the bound holds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    reference = manifest_on(SimulatedMachine("this machine"), references=references, seed=seed, out=workdir / "this-machine.json")
    rows = []
    for index, machine in enumerate(machines):
        other = manifest_on(machine, references=references, seed=seed, out=workdir / f"simulated-{index}.json")
        result = diff_manifests(reference, other)
        compared = sum(len(entry["features"]) for entry in reference["models"].values())
        model, layer, largest = max(result.deviations, key=lambda item: item[2], default=("", "", 0.0))
        rows.append({
            "machine": machine.name, "features": compared, "bitwise": compared - len(result.deviations),
            "largest": largest * NOISE_BOUND, "of_bound": largest, "where": f"{model} {layer}".strip(),
            "changes": len(result.changes),
        })
    return pd.DataFrame(rows)
