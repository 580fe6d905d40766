"""Behaviour checks on the extractor's module transformed: scripted, compiled, exported, to ONNX, moved
to another device."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from typing import Any, Callable

import torch
from torch import nn

from strategies import Extractor

from conformance.core.compare import compare
from conformance.core.timing import deep_copy, strategy_copy
from conformance.judging.behaviour.probe import _attached, _failure, GENERATED_CODE_SCALE, Probe, _request_verdict
from conformance.judging.checks import snapshot
from conformance.judging.context import ALL_LAYERS, CheckResult
from conformance.truth.oracle import capture

__all__ = ["check_compile", "check_device_move", "check_export", "check_jit_script", "check_onnx"]


def _stand_in_verdict(check: str, probe: Probe, transform: Callable[[nn.Module], Any], *, failure: str, context: str) -> list[CheckResult]:
    """The extractor run through ``transform(its module)`` (scripted, exported) instead of the module."""
    with _attached(probe) as extractor:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stand_in = transform(extractor.module)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", failure, _failure(exc))]
        try:
            got = snapshot(extractor.extract_with(stand_in, probe.input).features)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"{context}: {_failure(exc)}")]
    return _request_verdict(check, probe, got, context=context)


def check_jit_script(probe: Probe) -> list[CheckResult]:
    """``torch.jit.script`` of the extractor's module runs and gives the true values."""
    return _stand_in_verdict("jit_script", probe, torch.jit.script, failure="script_failed", context="scripted")


def _late_hook_note(extractor: Extractor, compiled: Callable[..., Any], x: torch.Tensor) -> str:
    """Whether a forward hook registered after the first compiled call is called."""
    leaf = next((m for m in extractor.module.modules() if not list(m.children()) and list(m.parameters())), None)
    if leaf is None:
        return ""
    calls: list[int] = []
    handle = leaf.register_forward_hook(lambda *args: calls.append(1))
    try:
        extractor.extract_with(compiled, x)
    finally:
        handle.remove()
    return "a forward hook added after the first compiled call was " + ("called" if calls else "not called (torch.compile does not see it)")


def check_compile(probe: Probe) -> list[CheckResult]:
    """``torch.compile`` of the extractor's module runs and gives the true values; reports
    whether hooks added after the first compiled call are seen."""
    check = "compile"
    torch._dynamo.reset()
    with _attached(probe) as extractor:
        compiled = torch.compile(extractor.module)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = snapshot(extractor.extract_with(compiled, probe.input).features)
                note = _late_hook_note(extractor, compiled, probe.input)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "compile_failed", _failure(exc))]
    return _request_verdict(check, probe, got, context="compiled", scale=GENERATED_CODE_SCALE, notes=[note])


def check_export(probe: Probe) -> list[CheckResult]:
    """``torch.export.export`` of the extractor's module succeeds and the exported program
    gives the true values."""
    return _stand_in_verdict("export", probe, lambda module: torch.export.export(module, (probe.input,)).module(),
                             failure="export_failed", context="exported")


def check_onnx(probe: Probe) -> list[CheckResult]:
    """ONNX export of the extractor's module succeeds and, run with onnxruntime, its outputs
    include every trusted layer's true value."""
    check = "onnx"
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return [CheckResult(check, ALL_LAYERS, "skipped", "unavailable",
                            f"{exc.name} is not installed; install with: pip install 'feature-conformance[onnx]'")]
    with _attached(probe) as extractor, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(extractor.module, (probe.input,), dynamo=True, verbose=False)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "export_failed", _failure(exc))]
        try:
            outputs = [output.to(probe.input.device) for output in program(probe.input)]
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"onnxruntime: {_failure(exc)}")]
    missing = [
        layer for layer in probe.trusted
        if probe.truth.layers[layer].value is not None
        and not any(compare(output, probe.truth.layers[layer].value, scale=GENERATED_CODE_SCALE).close for output in outputs)
    ]
    if missing:
        return [CheckResult(check, ALL_LAYERS, "fail", "not_an_output",
                            f"{len(missing)} of {len(probe.trusted)} layers are not among the {len(outputs)} outputs of the exported graph "
                            f"(e.g. {missing[0]}): features kept as side effects do not survive export")]
    return [CheckResult(check, ALL_LAYERS, "pass", "", f"every one of {len(probe.trusted)} layers is an output of the exported graph, equal to the truth")]


def check_device_move(probe: Probe) -> list[CheckResult]:
    """An extractor built on CPU and moved to CUDA works there and gives the true values."""
    check = "device_move"
    if not torch.cuda.is_available():
        return [CheckResult(check, ALL_LAYERS, "skipped", "no_gpu", "no CUDA device here")]
    on_gpu = probe.input.cuda()
    if probe.input.is_cuda:
        truth = probe.truth
    else:
        truth = probe.oracle_for_layers(check, lambda layers: capture(deep_copy(probe.model).cuda(), on_gpu, layers=layers, tracer_kwargs=probe.tracer_kwargs))
    with _attached(probe, model=strategy_copy(probe.model).cpu()) as extractor:
        extractor.module.to("cuda")
        try:
            got = snapshot(extractor(on_gpu).features)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"after .to('cuda'): {_failure(exc)}")]
    moved = dataclasses.replace(probe, truth=truth)
    return _request_verdict(check, moved, got, context="moved to CUDA")
