"""``torchlens``: ``torchlens.trace``, reading the saved outputs of the requested modules.

TorchLens 2 renamed ``log_forward_pass`` to ``trace``; this is the call its README shows:
``log = torchlens.trace(model, x, save=torchlens.module("layer1") | ...)`` and
``log["layer1"].out``. A module that ran more than once is read by its call
(``log.modules[path].calls[i].out``), as TorchLens asks. Ops are named by TorchLens' own
labels (``conv2d_1_1``), not FX node names, so an op cannot be requested.

``trace`` wraps torch functions on first use and leaves them wrapped; the adapter passes
TorchLens' documented ``CaptureOptions(unwrap_when_done=True)`` so that the other strategies
and the oracle in the same process run on plain torch.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Mapping, Sequence

import torch
import torchlens
from torch import nn

from .base import Arguments, Extraction, Extractor, Strategy, Tap, Unsupported

__all__ = ["TorchLens"]


class _TorchLensExtractor(Extractor):
    def __init__(self, model: nn.Module, calls: Mapping[str, tuple[str, int]]) -> None:
        self.module = model
        self.calls = calls  # name -> (module path, index of the call)
        self.save = functools.reduce(operator.or_, [torchlens.module(path) for path, _ in dict.fromkeys(calls.values())])
        self.capture = torchlens.options.CaptureOptions(unwrap_when_done=True)

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        # TorchLens reads a list or tuple as the positional arguments themselves
        arguments = list(x) if isinstance(x, Arguments) else x if isinstance(x, torch.Tensor) else [x]
        log = torchlens.trace(module, arguments, save=self.save, capture=self.capture)
        return Extraction(features={name: log.modules[path].calls[index].out for name, (path, index) in self.calls.items()})


class TorchLens(Strategy):
    """``torchlens.trace(model, x, save=torchlens.module(path) | ...)``."""

    main_process_only = ("TorchLens refuses a capture in a child process that is not a distributed rank "
                         "(CaptureContextError child_process_capture_unsupported)")

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        taps = [layer if isinstance(layer, Tap) else Tap(layer) for layer in layers]
        ops = [tap for tap in taps if tap.is_op]
        if ops:
            raise Unsupported("TorchLens names ops by its own labels (conv2d_1_1), not by FX node names",
                              layers=ops, reasons={str(tap): f"{tap} is {tap.describe()}; TorchLens names ops by its own labels" for tap in ops})
        return _TorchLensExtractor(model, {str(tap): (tap.module, -1 if tap.call is None else tap.call - 1) for tap in taps})
