"""Behaviour checks: what a strategy does beyond one eval-mode extraction.

A behaviour check is a function from a :class:`Probe` to rows, named in
:data:`BEHAVIOUR_CHECKS`. Where a value check (``checks.py``) judges one extraction, a
behaviour check acts: it attaches the strategy again, switches modes, differentiates,
copies, scripts, compiles or exports the extractor, and asks the oracle for the truth
under the same conditions. When the action fails (the extractor cannot be scripted, or
crashes at another input size) the row is a ``fail`` whose diagnosis names the action; a
crash of the check's own code is an ``error``. When the plain model itself cannot run
under the condition, the row is ``skipped`` and says so.

Checks that compare values with the truth judge only the *trusted* layers, whose eval-mode
values are right; the others are ``skipped`` naming the value failure, so that a behaviour
row measures the behaviour and not the eval-mode defect again.

The checks live by family: ``requests`` (set independence, input size, batch), ``modes`` (train
mode, mode graphs, autocast, channels-last, inference mode), ``autograd`` (gradients), ``copies``
(deepcopy, state dict) and ``transforms`` (script, compile, export, ONNX, device move), each on
``probe`` (what a check may use, and the helpers they share).
"""

from __future__ import annotations

from typing import Callable

from conformance.judging.behaviour.autograd import check_gradients
from conformance.judging.behaviour.copies import check_deepcopy, check_state_dict
from conformance.judging.behaviour.modes import check_autocast, check_channels_last, check_inference_mode, check_mode_graphs, check_train_mode
from conformance.judging.behaviour.probe import ModelRejects, Probe, REDUCED_INPUT_CHECKS, reductions
from conformance.judging.behaviour.requests import check_batch_consistency, check_input_size, check_set_independence
from conformance.judging.behaviour.transforms import check_compile, check_device_move, check_export, check_jit_script, check_onnx
from conformance.judging.context import CheckResult

__all__ = ["BEHAVIOUR_CHECKS", "PER_LAYER_BEHAVIOUR_CHECKS", "REDUCED_INPUT_CHECKS", "ModelRejects", "Probe", "reductions"]

BEHAVIOUR_CHECKS: dict[str, Callable[[Probe], list[CheckResult]]] = {
    "set_independence": check_set_independence,
    "train_mode": check_train_mode,
    "mode_graphs": check_mode_graphs,
    "gradients": check_gradients,
    "input_size": check_input_size,
    "batch_consistency": check_batch_consistency,
    "deepcopy": check_deepcopy,
    "state_dict": check_state_dict,
    "jit_script": check_jit_script,
    "export": check_export,
    "compile": check_compile,
    "onnx": check_onnx,
    "device_move": check_device_move,
    "autocast": check_autocast,
    "channels_last": check_channels_last,
    "inference_mode": check_inference_mode,
}
#: Behaviour checks that give one row per layer (the others give one row per request).
PER_LAYER_BEHAVIOUR_CHECKS = ("set_independence", "train_mode", "gradients", "input_size", "batch_consistency",
                              "autocast", "channels_last", "inference_mode")
