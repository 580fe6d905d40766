"""Feature fingerprints that tell a real change from float noise.

A fingerprint records a feature's shape, dtype, float64 ``sum`` and ``norm`` (for people to
read) and a **sketch**: the flattened values cut into blocks of :data:`SKETCH_BLOCK`
elements, each block summed with a fixed pattern of +1 and -1 weights (half of each).

Two fingerprints are judged in units of the feature's scale, its RMS (``norm / sqrt(count)``):
a statistic that sums ``m`` elements may move by ``NOISE_BOUND * rms * sqrt(m)`` before it
counts as a change. That is the behaviour of independent rounding noise, which is what
another CPU, thread count or kernel produces. The plain sum is not judged: a change of
kernel shifts every element of a normalised feature the same way, and its sum, close to
zero, moves by up to 5.5e-4 of the norm, while the signed block sums cancel such shifts.

The bound was measured on the quick zoo's 979 features (160M elements), each condition
against 2 threads of an AVX-512/AMX Intel Xeon under torch 2.14.1; the largest block
deviation, in the units above:

============================================  =======
condition                                      largest
============================================  =======
threads 3, 4, 16                               2.3e-6
threads 1                                      3.4e-6
ATen AVX2 kernels (``ATEN_CPU_CAPABILITY``)    1.3e-6
oneDNN AVX2 (``ONEDNN_MAX_CPU_ISA``)           5.9e-6
MKL AVX2 (``MKL_ENABLE_INSTRUCTIONS``)         3.8e-6
all three AVX2 (an AVX-512-less EPYC)          5.9e-6
ATen scalar kernels (no SIMD)                  1.2e-5
torch built without oneDNN (not covered)       2.9e-5
============================================  =======

``NOISE_BOUND`` is twice the largest covered condition. A single element moved by
``1e-3 * rms`` moves its block by ``1e-3 / sqrt(1024) = 3.1e-5`` in those units, above the
bound: the sketch sees it wherever it lies. ``conformance manifest noise`` measures the
table again for the installed versions.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy
import torch

__all__ = ["NOISE_BOUND", "SKETCH_BLOCK", "Deviation", "compare_fingerprints", "fingerprint"]

#: Elements per sketch block.
SKETCH_BLOCK = 1024
#: The largest deviation that is float noise, in units of ``rms * sqrt(elements summed)``.
NOISE_BOUND = 2.5e-5


def _block_weights() -> torch.Tensor:
    """+1 for the half of the positions whose hash is lowest, -1 for the other half."""
    digests = [hashlib.blake2b(position.to_bytes(4, "little"), digest_size=8).digest() for position in range(SKETCH_BLOCK)]
    ranked = sorted(range(SKETCH_BLOCK), key=digests.__getitem__)
    weights = torch.full((SKETCH_BLOCK,), -1.0, dtype=torch.float64)
    weights[ranked[: SKETCH_BLOCK // 2]] = 1.0
    return weights


_WEIGHTS = _block_weights()


def _sketch(values: torch.Tensor) -> torch.Tensor:
    """Signed sums of consecutive blocks of the flattened float64 ``values``."""
    flat = values.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % SKETCH_BLOCK))
    return (padded.view(-1, SKETCH_BLOCK) * _WEIGHTS).sum(dim=1)


def _encode(sketch: torch.Tensor) -> str:
    """Little-endian float32, base64: precise to 6e-8 of a block sum, far below the bound."""
    return base64.b64encode(sketch.numpy().astype("<f4").tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.from_numpy(numpy.frombuffer(base64.b64decode(text), dtype="<f4").astype("float64"))


def fingerprint(value: Any) -> dict:
    """Shape, dtype, sum, norm and sketch of a tensor; the type name of anything else."""
    if not isinstance(value, torch.Tensor):
        return {"type": type(value).__name__}
    as_double = value.detach().to("cpu", torch.float64)
    return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
            "sum": float(as_double.sum()), "norm": float(as_double.norm()), "sketch": _encode(_sketch(as_double))}


@dataclass(frozen=True)
class Deviation:
    """How far apart two fingerprints of the same shape are, in units of the noise bound."""

    ratio: float  # the largest deviation over NOISE_BOUND: above 1 is a change
    where: str  # the statistic: "norm" or "block K of N (elements A-B)"

    @property
    def changed(self) -> bool:
        return self.ratio > 1.0

    def describe(self) -> str:
        return f"{self.where} moved {self.ratio:.3g}x the noise bound"


def compare_fingerprints(before: dict, after: dict) -> Deviation:
    """The largest deviation between two fingerprints of one shape, judged against the scale
    of the larger of the two features (``rms * sqrt(elements summed)``)."""
    count = math.prod(before["shape"])
    scale = max(before["norm"], after["norm"]) / math.sqrt(count) if count else 0.0
    if scale == 0.0:
        return Deviation(0.0, "norm")
    worst = Deviation(abs(after["norm"] - before["norm"]) / (scale * math.sqrt(count)) / NOISE_BOUND, "norm")
    blocks_before, blocks_after = _decode(before["sketch"]), _decode(after["sketch"])
    sizes = torch.full_like(blocks_before, SKETCH_BLOCK)
    sizes[-1] = count - SKETCH_BLOCK * (len(sizes) - 1)
    ratios = (blocks_after - blocks_before).abs() / (scale * sizes.sqrt()) / NOISE_BOUND
    block = int(ratios.argmax())
    if ratios[block] > worst.ratio:
        first = block * SKETCH_BLOCK
        worst = Deviation(float(ratios[block]), f"block {block + 1} of {len(sizes)} (elements {first}-{first + int(sizes[block]) - 1})")
    return worst
