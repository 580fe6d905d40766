"""The gradients check: backward from the features reaches the input and the parameters with the
oracle's gradients; where not, which parameter and why."""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from conformance.core.compare import compare, tolerance
from conformance.core.timing import strategy_copy
from conformance.judging.behaviour.probe import _all_layers, _at_size, _attached, _failure, GRADIENT_SCALE, ModelRejects, _on_reduced_input, _other_nodes, _per_layer, Probe
from conformance.judging.checks import tensor_digest
from conformance.judging.context import CheckResult
from conformance.judging.diagnoses import UNEXPLAINED
from conformance.truth.oracle import GradientPass, gradients

__all__ = ["check_gradients"]


def _loss_weight(layer: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(layer.encode()))
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


@_on_reduced_input(per_layer=True)
def check_gradients(probe: Probe) -> list[CheckResult]:
    """Backward from the features reaches the input and the parameters that feed them, with
    the oracle's gradients (eval mode, a fixed random weighting of each feature).

    One backward of the weighted sum over the layers is compared first; with independent
    random weights a wrong path cannot cancel out, so only when it differs is each layer's
    backward compared on its own, to say which layers are wrong. Judged on the reduced input
    (:meth:`Probe.on_reduced_input`): which path a gradient takes does not depend on the batch or the size.
    """
    check = "gradients"
    truth = probe.truth
    differentiable = [
        layer for layer in probe.trusted
        if isinstance(truth.layers[layer].value, torch.Tensor) and truth.layers[layer].value.is_floating_point()
    ]
    weights = {layer: _loss_weight(layer, truth.layers[layer].value, probe.seed) for layer in differentiable}

    def truth_for(layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen = {layer: weights[layer] for layer in layers}

        def compute() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            try:
                shared = _gradient_pass(probe)
            except ModelRejects:  # the pass of every layer failed: these layers' own pass says whether theirs does
                return gradients(probe.model, probe.input, weights=chosen, tracer_kwargs=probe.tracer_kwargs)
            return shared(weights=chosen)

        return probe.oracle(f"{check}:{','.join(layers)}", compute)

    model = strategy_copy(probe.model)
    x = probe.input.detach().clone().requires_grad_(True)
    rows: dict[str, CheckResult] = {}
    try:
        with _attached(probe, model=model) as extractor, torch.enable_grad():
            features = extractor(x).features
            matcher = _ParameterMatcher(model, extractor.module, probe.model_digests)
            graphed = []
            for layer in differentiable:
                value = features.get(layer)
                if not isinstance(value, torch.Tensor):
                    rows[layer] = CheckResult(check, layer, "fail", "missing", "no tensor returned")
                elif value.grad_fn is None and not value.requires_grad:
                    rows[layer] = CheckResult(check, layer, "fail", "detached", "the feature carries no autograd graph: no gradient reaches the input or the parameters")
                else:
                    graphed.append(layer)
            if graphed:
                problems, count = matcher.problems(features, graphed, weights, x, truth_for(graphed))
                if not problems:
                    for layer in graphed:
                        rows[layer] = CheckResult(check, layer, "pass", "", f"one backward from the {len(graphed)} features: the input and {count} parameter gradients equal the oracle's")
                for layer in graphed if problems else ():
                    alone, count = matcher.problems(features, [layer], weights, x, truth_for([layer]))
                    rows[layer] = (CheckResult(check, layer, "fail", *_gradient_diagnosis(probe, layer, "; ".join(alone), value=features[layer].detach())) if alone
                                   else CheckResult(check, layer, "pass", "", f"the input and {count} parameter gradients equal the oracle's"))
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself cannot be differentiated: {exc}")
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"with autograd on: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        if layer in rows:
            return rows[layer]
        why = "the module does not run" if truth.layers[layer].value is None else "not a floating-point tensor"
        return CheckResult(check, layer, "skipped", "", why)

    return _per_layer(check, probe, judge)


def _gradient_pass(probe: Probe) -> GradientPass:
    """The oracle's pass for the gradients of every floating-point layer of the probe's truth, one
    per model and input, shared by the strategies (raises :class:`ModelRejects` when it fails)."""
    layers = [layer for layer, truth in probe.truth.layers.items()
              if isinstance(truth.value, torch.Tensor) and truth.value.is_floating_point()]
    return probe.oracle(f"gradient pass@{layers}", lambda: GradientPass(probe.model, probe.input, layers=layers, tracer_kwargs=probe.tracer_kwargs))


def _gradient_diagnosis(probe: Probe, layer: str, detail: str, *, value: Any) -> tuple[str, str]:
    """A wrong gradient of a feature: when its value for the probe's input is bitwise another
    node's, that node is what the strategy returned (``wrong_node``); when the value is the truth,
    only the gradient is wrong (``wrong_gradient``); else the value is wrong there as well (unexplained)."""
    truth = probe.truth.layers[layer].value
    if not (isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor)):
        return UNEXPLAINED, detail
    if not torch.equal(value, truth):
        nodes = _other_nodes(probe, layer, value, close=torch.equal)
        if nodes:
            return "wrong_node", f"the feature is node {nodes[0]!r}'s value, within tolerance of the truth but not it; {detail}"
    if not compare(value, truth).close:
        return UNEXPLAINED, f"the value is wrong at{_at_size(probe.input)} as well, though right for the input; {detail}"
    return "wrong_gradient", f"the value is right, its gradient is not; {detail}"


class _ParameterMatcher:
    """Pairs the parameters a strategy differentiates with the model's, by identity where
    the strategy runs the model's own modules, else by content (a rebuilt model)."""

    def __init__(self, model: nn.Module, module: nn.Module, model_digests: Mapping[str, str]) -> None:
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self.by_digest: dict[str, list[str]] = {}
        for name, digest in model_digests.items():
            self.by_digest.setdefault(digest, []).append(name)

    def problems(self, features: Mapping[str, Any], layers: Sequence[str], weights: Mapping[str, torch.Tensor],
                 x: torch.Tensor, truth: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> tuple[list[str], int]:
        """What differs between the strategy's and the true gradients of the weighted sum
        over ``layers``, and how many parameters the truth has gradients for."""
        loss = sum((features[layer] * weights[layer]).sum() for layer in layers)
        grads = torch.autograd.grad(loss, [x, *(p for _, p in self.params)], allow_unused=True, retain_graph=True)
        true_input, true_params = truth
        problems = []
        if grads[0] is None:
            problems.append("no gradient reaches the input")
        elif not _gradient_close(grads[0], true_input):
            error = (grads[0] - true_input).abs().max().item() / max(true_input.abs().max().item(), 1e-30)
            problems.append(f"input gradient differs (max error {error:.3g} of its largest element)")
        wrong, covered = [], set()
        for (name, p), grad in zip(self.params, grads[1:]):
            candidates = [self.names[id(p)]] if id(p) in self.names else self.by_digest.get(tensor_digest(p), [])
            # Equal tensors (freshly initialised norms) are ambiguous by content: prefer the
            # name sharing the longest dotted suffix (a rebuilt model renames prefixes), and
            # claim each name once.
            candidates = sorted(candidates, key=lambda c: -_shared_suffix(c, name))
            agreeing = [c for c in candidates if self._agrees(grad, true_params.get(c))]
            match = next((c for c in agreeing if c not in covered), agreeing[0] if agreeing else None)
            if match is None:
                wrong.append(name)
            else:
                covered.add(match)
        unreached = [name for name in true_params if name not in covered]
        if wrong or unreached:
            problems.append(f"{len(wrong) + len(unreached)} of {len(true_params)} parameter gradients differ or are missing (e.g. {', '.join((wrong or unreached)[:3])})")
        return problems, len(true_params)

    @staticmethod
    def _agrees(grad: torch.Tensor | None, expected: torch.Tensor | None) -> bool:
        """No gradient and an all-zero one are the same finding."""
        if grad is None or expected is None:
            other = expected if grad is None else grad
            return other is None or not bool(other.any())
        return _gradient_close(grad, expected)


def _shared_suffix(a: str, b: str) -> int:
    """How many trailing dotted parts two parameter names share."""
    count = 0
    for x, y in zip(reversed(a.split(".")), reversed(b.split("."))):
        if x != y:
            break
        count += 1
    return count


def _gradient_close(grad: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to ``GRADIENT_SCALE`` rtol of the dtype, relative to the largest element (bitwise
    equal, as a strategy that runs the model's own modules gives it, at once)."""
    if grad.shape != expected.shape:
        return False
    if grad.dtype == expected.dtype and grad.device == expected.device and torch.equal(grad, expected):
        return True
    rtol, atol = tolerance(expected.dtype, expected.device)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return (grad.double() - expected.double()).abs().max().item() <= rtol * GRADIENT_SCALE * scale + atol if grad.numel() else True
