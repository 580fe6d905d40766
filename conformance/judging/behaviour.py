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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from strategies import Extractor, Strategy, Tap, Unsupported

from conformance.judging.checks import snapshot, tensor_digest

from conformance.judging.context import ALL_LAYERS, CheckResult
from conformance.core.compare import compare, tolerance
from conformance.judging.diagnoses import UNEXPLAINED
from conformance.truth.layers import node_table, runs_in
from conformance.truth.oracle import OracleCapture, capture, gradients, locate_nodes
from conformance.core.rng import PinnedExtractor
from conformance.core.timing import deep_copy

__all__ = ["BEHAVIOUR_CHECKS", "PER_LAYER_BEHAVIOUR_CHECKS", "REDUCED_INPUT_CHECKS", "ModelRejects", "Probe", "reductions"]

#: Gradients are compared relative to their largest element, times this multiple of the
#: dtype's rtol: they are sums over many terms, accumulated in a strategy-dependent order.
GRADIENT_SCALE = 100.0
#: Tolerance multiplier for values from generated kernels (torch.compile, onnxruntime),
#: which fuse and reorder floating-point operations.
GENERATED_CODE_SCALE = 100.0


class ModelRejects(Exception):
    """The plain model itself fails under a check's condition (the check is skipped)."""


@dataclass
class Probe:
    """What a behaviour check may use: the strategy, the pristine model and the oracle."""

    strategy: Strategy
    model: nn.Module  # the pristine model; checks act on deep copies
    layers: list[str]  # the request the strategy can serve (taps)
    requested: list[str]  # the whole request, layers the strategy refused included
    untrusted: dict[str, str]  # layer -> why its eval-mode values are wrong
    tracer_kwargs: Mapping[str, Any]  # the model's FX options, for the strategy and the oracle
    input: torch.Tensor
    previous_input: torch.Tensor
    truth: OracleCapture  # eval mode, for the input
    previous_truth: OracleCapture  # eval mode, for the previous input
    model_digests: dict[str, str] = field(default_factory=dict)  # the model's state-dict tensors, by name
    leaves_model_untouched: bool = False  # measured on the main request: closing restores the model
    seed: int = 0
    memo: dict = field(default_factory=dict)  # oracle results shared by the strategies of one model
    unsteady: Mapping[str, str] = field(default_factory=dict)  # layers the model itself changes from pass to pass (OracleCapture.unsteady)

    @property
    def trusted(self) -> list[str]:
        return [layer for layer in self.layers if layer not in self.untrusted]

    def attach(self, *, layers: Sequence[str] | None = None, model: nn.Module | None = None) -> Extractor:
        """The strategy attached to a fresh deep copy of the model (or to ``model``)."""
        target = deep_copy(self.model) if model is None else model
        return PinnedExtractor(self.strategy.attach(target, layers=list(self.layers if layers is None else layers), tracer_kwargs=self.tracer_kwargs))

    def on_reduced_input(self) -> Probe:
        """This probe on the reduced input: the first example of the input and of the previous
        input at half their height and width (every other pixel) where both are 64 or more and
        the model takes that size, else the first examples as they are, with the oracle's
        eval-mode truths for them. Raises :class:`ModelRejects` when the model fails on both.

        For checks whose question does not involve the batch or the size (is a value the same
        requested alone, under autocast, from a copy), this costs an eighth of the input's
        passes on a convolutional network; a model with a fixed input size (a ViT) keeps it."""
        def compute(layers: list[str]) -> tuple[torch.Tensor, torch.Tensor, OracleCapture, OracleCapture]:
            def truths(x: torch.Tensor, earlier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, OracleCapture, OracleCapture]:
                return (x, earlier, capture(self.model, x, layers=layers, tracer_kwargs=self.tracer_kwargs),
                        capture(self.model, earlier, layers=layers, tracer_kwargs=self.tracer_kwargs))

            *smaller, first = zip(reductions(self.input), reductions(self.previous_input))
            for x, earlier in smaller:
                with contextlib.suppress(Exception):
                    return truths(x, earlier)
            return truths(*first)

        x, earlier, truth, previous_truth = self.oracle_for_layers("reduced", compute)
        return dataclasses.replace(self, input=x, previous_input=earlier, truth=truth, previous_truth=previous_truth)

    def oracle(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per model and ``key``, shared by every strategy (the key names
        what the result depends on); raises :class:`ModelRejects` when the plain model fails."""
        if key not in self.memo:
            try:
                self.memo[key] = compute()
            except Exception as exc:
                self.memo[key] = ModelRejects(f"{type(exc).__name__}: {_first_line(exc)}")
        if isinstance(self.memo[key], ModelRejects):
            raise self.memo[key]
        return self.memo[key]

    def oracle_for_layers(self, key: str, compute: Callable[[list[str]], Any]) -> Any:
        """``compute(layers)``, a truth under a check's condition, taken once per model for the
        whole request and shared by every strategy, whose layers are part of it (a capture of more
        layers records the same values for these); where the whole request fails, for this
        strategy's layers alone. Raises :class:`ModelRejects` when the plain model fails."""
        whole = list(self.requested)
        try:
            return self.oracle(f"{key}@{whole}", lambda: compute(whole))
        except ModelRejects:
            if set(self.layers) >= set(whole):
                raise
        return self.oracle(f"{key}@{list(self.layers)}", lambda: compute(list(self.layers)))


def reductions(x: torch.Tensor) -> list[torch.Tensor]:
    """The reduced inputs to try in turn, for a question that the batch and the input size do not
    enter into: the first example at half its height and width (every other pixel) where both
    are 64 or more, then the first example as it is."""
    first = x[:1]
    if first.dim() >= 4 and min(first.shape[-2:]) >= 64:
        return [first[..., ::2, ::2].contiguous(), first]
    return [first]


def _at_size(x: torch.Tensor) -> str:
    """`` at HxW`` for an input with spatial dimensions."""
    return f" at {'x'.join(map(str, x.shape[2:]))}" if x.dim() > 2 else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _judge(check: str, layer: str, features: Mapping[str, Any], truth: Any, *, context: str, scale: float = 1.0, previous: Any = None) -> CheckResult:
    """One layer's value under a condition against the truth under it (``None``: not run);
    ``previous`` is the value for an input given earlier, to recognise a stale one."""
    if truth is None:
        if layer in features:
            return CheckResult(check, layer, "fail", "not_called", f"{context}: the module does not run, yet a value was returned")
        return CheckResult(check, layer, "pass", "", f"{context}: the module does not run and nothing was returned")
    if layer not in features:
        return CheckResult(check, layer, "fail", "missing", f"{context}: no value returned")
    comparison = compare(features[layer], truth, scale=scale)
    if comparison.close:
        return CheckResult(check, layer, "pass", "", f"{context}: equals the truth", max_abs_err=comparison.max_abs_err,
                           scale=comparison.scale, bitwise=comparison.bitwise)
    diagnosis = f"{comparison.mismatch}_mismatch" if comparison.mismatch else UNEXPLAINED
    detail = comparison.detail or f"max abs err {comparison.max_abs_err:.3g}"
    if previous is not None and compare(features[layer], previous).close:
        diagnosis, detail = "stale", "holds the value for the input given before"
    return CheckResult(check, layer, "fail", diagnosis, f"{context}: {detail}", max_abs_err=comparison.max_abs_err,
                       scale=comparison.scale, bitwise=False)


def _per_layer(check: str, probe: Probe, judge: Callable[[str], CheckResult], *, trusted_only: bool = True) -> list[CheckResult]:
    rows = []
    for layer in probe.layers:
        if layer in probe.unsteady:
            rows.append(CheckResult(check, layer, "skipped", "nondeterministic_model", f"the model is nondeterministic here: {probe.unsteady[layer]}"))
        elif trusted_only and layer in probe.untrusted:
            rows.append(CheckResult(check, layer, "skipped", "values_wrong", f"eval-mode values are already wrong ({probe.untrusted[layer]}); not judged again"))
        else:
            rows.append(judge(layer))
    return rows


def _all_layers(check: str, probe: Probe, status: str, diagnosis: str, detail: str, *, trusted_only: bool = True) -> list[CheckResult]:
    return _per_layer(check, probe, lambda layer: CheckResult(check, layer, status, diagnosis, detail), trusted_only=trusted_only)


def _request_verdict(check: str, probe: Probe, features: Mapping[str, Any], *, context: str, scale: float = 1.0, notes: Sequence[str] = ()) -> list[CheckResult]:
    """One request-wide row: every trusted layer's value against the eval truth."""
    verdicts = [
        _judge(check, layer, features, probe.truth.layers[layer].value, context=context, scale=scale,
               previous=probe.previous_truth.layers[layer].value)
        for layer in probe.trusted
    ]
    failed = [row for row in verdicts if row.status == "fail"]
    left_out = f"{len(probe.untrusted)} layers with wrong eval-mode values not judged" if probe.untrusted else ""
    if failed:
        shown = "; ".join(f"{row.layer}: {row.detail.removeprefix(context + ': ')}" for row in failed[:4])
        more = f"; and {len(failed) - 4} more" if len(failed) > 4 else ""
        detail = "; ".join(filter(None, [f"{context}: {len(failed)} of {len(verdicts)} layers wrong: {shown}{more}", *notes, left_out]))
        return [CheckResult(check, ALL_LAYERS, "fail", failed[0].diagnosis, detail, max_abs_err=failed[0].max_abs_err, scale=failed[0].scale)]
    worst = max((row for row in verdicts if row.max_abs_err is not None and row.scale), key=lambda row: row.max_abs_err / row.scale, default=None)
    detail = "; ".join(filter(None, [f"{context}: all {len(verdicts)} layers equal the truth", *notes, left_out]))
    return [CheckResult(check, ALL_LAYERS, "pass", "", detail, max_abs_err=worst.max_abs_err if worst else None, scale=worst.scale if worst else None,
                        bitwise=all(row.bitwise for row in verdicts) if verdicts else None)]


@contextlib.contextmanager
def _attached(probe: Probe, **kwargs: Any):
    extractor = probe.attach(**kwargs)
    try:
        yield extractor
    finally:
        extractor.close()


#: Behaviour checks asked on :meth:`Probe.on_reduced_input` (those decorated with ``_on_reduced_input``).
REDUCED_INPUT_CHECKS: list[str] = []


def _on_reduced_input(*, per_layer: bool) -> Callable[[Callable[[Probe], list[CheckResult]]], Callable[[Probe], list[CheckResult]]]:
    """Run the decorated check on :meth:`Probe.on_reduced_input`: for a question that the batch
    and the input size do not enter into. Skipped where the model fails on its first example."""
    def decorate(check_fn: Callable[[Probe], list[CheckResult]]) -> Callable[[Probe], list[CheckResult]]:
        check = check_fn.__name__.removeprefix("check_")
        REDUCED_INPUT_CHECKS.append(check)

        @functools.wraps(check_fn)
        def run(probe: Probe) -> list[CheckResult]:
            try:
                small = probe.on_reduced_input()
            except ModelRejects as exc:
                detail = f"the model itself fails on its input's first example: {exc}"
                return _all_layers(check, probe, "skipped", "model_rejects", detail) if per_layer else [
                    CheckResult(check, ALL_LAYERS, "skipped", "model_rejects", detail)]
            return check_fn(small)
        return run
    return decorate


@_on_reduced_input(per_layer=True)
def check_set_independence(probe: Probe) -> list[CheckResult]:
    """A layer's value is the same requested alone as requested with the other layers.

    Judged on the reduced input (:meth:`Probe.on_reduced_input`): one extraction of the whole request
    and one per layer, where the question does not involve the batch or the size."""
    check = "set_independence"
    if len(probe.layers) < 2:
        return [CheckResult(check, layer, "skipped", "", "only one layer requested") for layer in probe.layers]
    x, truth = probe.input, probe.truth
    # A strategy measured to leave the model as it found it attaches to one shared copy.
    shared = deep_copy(probe.model) if probe.leaves_model_untouched else None

    def extract(layers: Sequence[str]) -> dict[str, Any]:
        model = shared if shared is not None else deep_copy(probe.model)
        with _attached(probe, layers=layers, model=model) as extractor:
            return snapshot(extractor(x).features)

    try:
        together = extract(probe.layers)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"the whole request on one example{_at_size(x)}: {_failure(exc)}", trusted_only=False)

    def judge(layer: str) -> CheckResult:
        try:
            alone = extract([layer])
        except Unsupported as exc:
            return CheckResult(check, layer, "unsupported", "", f"requested alone: {exc}")
        except Exception as exc:
            return CheckResult(check, layer, "fail", "fails_alone", f"requested alone: {_failure(exc)}")
        others = len(probe.layers) - 1
        if layer not in alone or layer not in together:
            if layer not in alone and layer not in together:
                return CheckResult(check, layer, "pass", "", "returned neither alone nor with the others")
            where = "alone" if layer in alone else f"with the {others} other layers"
            return CheckResult(check, layer, "fail", "depends_on_request", f"returned only when requested {where}")
        comparison = compare(alone[layer], together[layer])
        if comparison.close:
            return CheckResult(check, layer, "pass", "", f"the same alone as with the {others} other layers (one example{_at_size(x)})",
                               max_abs_err=comparison.max_abs_err, scale=comparison.scale, bitwise=comparison.bitwise)
        true = truth.layers[layer].value

        def right(value: Any) -> str:
            return "right" if true is not None and compare(value, true).close else "wrong"

        return CheckResult(check, layer, "fail", "depends_on_request",
                           f"alone: {right(alone[layer])}; with the {others} other layers: {right(together[layer])}",
                           max_abs_err=comparison.max_abs_err, scale=comparison.scale, bitwise=False)

    return _per_layer(check, probe, judge, trusted_only=False)


def check_train_mode(probe: Probe) -> list[CheckResult]:
    """In train mode (batch statistics, dropout at a fixed seed) the values are the truth,
    and switching back to eval after that is honoured."""
    check = "train_mode"

    def oracle(layers: list[str]) -> tuple[OracleCapture, OracleCapture]:
        model = deep_copy(probe.model).train()
        in_train = capture(model, probe.input, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs)
        model.eval()
        return in_train, capture(model, probe.input, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs)

    try:
        train_truth, eval_truth = probe.oracle_for_layers(check, oracle)
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails in train mode: {exc}")
    try:
        with _attached(probe) as extractor:
            extractor.module.train()
            get_state, states = _rng(probe.input.device)[0], {}  # for _rng_diagnosis: read-only pre-hooks
            with _on_module_calls(extractor.module, lambda path, call: states.setdefault((path, call), get_state())):
                in_train = snapshot(extractor(probe.input).features)
            extractor.module.eval()
            back = snapshot(extractor(probe.input).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"train mode: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        train_row = _judge(check, layer, in_train, train_truth.layers[layer].value, context="train mode")
        if train_row.diagnosis == UNEXPLAINED:
            train_row = _train_node_diagnosis(probe, layer, in_train[layer], train_row)
        if train_row.diagnosis == UNEXPLAINED:
            train_row = _rng_diagnosis(probe, layer, in_train[layer], train_row, states)
        eval_row = _judge(check, layer, back, eval_truth.layers[layer].value, context="back in eval")
        failed = [row for row in (train_row, eval_row) if row.status == "fail"]
        detail = f"{train_row.detail}; {eval_row.detail}"
        if failed:
            return CheckResult(check, layer, "fail", failed[0].diagnosis, detail, max_abs_err=failed[0].max_abs_err, scale=failed[0].scale)
        return CheckResult(check, layer, "pass", "", detail, max_abs_err=train_row.max_abs_err, scale=train_row.scale, bitwise=train_row.bitwise)

    return _per_layer(check, probe, judge)


def _other_nodes(probe: Probe, layer: str, value: torch.Tensor, *, close: Callable[[Any, Any], bool], train: bool | None = None) -> list[str]:
    """The nodes of the model's pass, other than ``layer``, whose value is ``value``."""
    return [node for node in locate_nodes(probe.model, probe.input, [value], close=close, tracer_kwargs=probe.tracer_kwargs, train=train)[0]
            if node != layer]


def _train_node_diagnosis(probe: Probe, layer: str, value: Any, row: CheckResult) -> CheckResult:
    """A wrong train-mode value that is another node's value in a train-mode pass (same seed):
    the strategy returned that node (``wrong_node``), which eval mode can hide within tolerance
    (a BatchNorm with fresh running statistics is nearly the identity)."""
    if not isinstance(value, torch.Tensor):
        return row
    nodes = _other_nodes(probe, layer, value, close=lambda a, b: compare(a, b).close, train=True)
    if not nodes:
        return row
    return CheckResult(row.check, layer, "fail", "wrong_node", f"{row.detail}, and matches node {nodes[0]!r} of the train-mode pass",
                       max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)


@contextlib.contextmanager
def _on_module_calls(module: nn.Module, on_call: Callable[[str, int], None]):
    """Call ``on_call(path, call)`` as each call of each submodule of ``module`` starts."""
    calls: dict[str, int] = {}

    def pre_hook(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any) -> None:
            calls[path] = calls.get(path, 0) + 1
            on_call(path, calls[path])
        return hook

    handles = [sub.register_forward_pre_hook(pre_hook(path)) for path, sub in module.named_modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _rng(device: torch.device) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]:
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda state: torch.cuda.set_rng_state(state, device))
    return torch.get_rng_state, torch.set_rng_state


def _rng_diagnosis(probe: Probe, layer: str, value: Any, row: CheckResult, states: Mapping[tuple[str, int], torch.Tensor]) -> CheckResult:
    """A wrong train-mode value that the true train-mode pass gives when each module call starts
    from the RNG state it had in the strategy's pass (same seed): the strategy drew from the
    global RNG during its pass, so dropout and other random ops did not get the seeded model's
    numbers (``rng_shifted``)."""
    if not states or not isinstance(value, torch.Tensor):
        return row
    _, set_state = _rng(probe.input.device)

    def restore(path: str, call: int) -> None:
        if (path, call) in states:
            set_state(states[(path, call)])

    model = deep_copy(probe.model).train()
    with _on_module_calls(model, restore):
        replay = capture(model, probe.input, layers=[tap for tap in probe.layers if tap == layer], on_copy=False,
                         tracer_kwargs=probe.tracer_kwargs).layers[layer].value
    if replay is None or not compare(value, replay).close:
        return row
    return CheckResult(row.check, layer, "fail", "rng_shifted",
                       f"{row.detail}, and the train-mode pass gives it when each module call starts from the RNG state "
                       "of the strategy's pass: the strategy draws from the global RNG, so random ops (dropout) get other numbers",
                       max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)


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
        return probe.oracle(f"{check}:{','.join(layers)}", lambda: gradients(probe.model, probe.input, weights=chosen, tracer_kwargs=probe.tracer_kwargs))

    model = deep_copy(probe.model)
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
    """Equal up to ``GRADIENT_SCALE`` rtol of the dtype, relative to the largest element."""
    if grad.shape != expected.shape:
        return False
    rtol, atol = tolerance(expected.dtype, expected.device)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return (grad.double() - expected.double()).abs().max().item() <= rtol * GRADIENT_SCALE * scale + atol if grad.numel() else True


def _other_size(shape: Sequence[int]) -> tuple[int, ...]:
    batch, channels, *spatial = shape
    return (batch, channels, *(size + 32 if size >= 64 else 2 * size for size in spatial))


def _other_input_verdict(check: str, probe: Probe, x: torch.Tensor, *, condition: str, use_input_first: bool = False) -> list[CheckResult]:
    """Each trusted layer's value for ``x`` against the oracle's for ``x`` (``condition``
    names how ``x`` differs from the input); with ``use_input_first`` the extractor is
    first called on the input."""
    try:
        truth = probe.oracle_for_layers(check, lambda layers: capture(probe.model, x, layers=layers, tracer_kwargs=probe.tracer_kwargs))
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails {condition}: {exc}")
    try:
        with _attached(probe) as extractor:
            if use_input_first:
                extractor(probe.input)
            got = snapshot(extractor(x).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"{condition}: {_failure(exc)}")
    return _per_layer(check, probe, lambda layer: _judge(check, layer, got, truth.layers[layer].value, context=condition))


def check_input_size(probe: Probe) -> list[CheckResult]:
    """An extractor used at one input size works at another and gives the truth there."""
    if probe.input.dim() < 3:
        return _all_layers("input_size", probe, "skipped", "", "the input has no spatial dimensions")
    shape = _other_size(probe.input.shape)
    other = torch.randn(*shape, generator=torch.Generator().manual_seed(probe.seed + 1)).to(probe.input.device)
    return _other_input_verdict("input_size", probe, other, condition=f"at {'x'.join(map(str, shape[2:]))}", use_input_first=True)


def check_batch_consistency(probe: Probe) -> list[CheckResult]:
    """A sample's features do not depend on the batch it is in (eval mode): at batch size 1
    they are the truth at batch size 1."""
    if probe.input.shape[0] < 2:
        return _all_layers("batch_consistency", probe, "skipped", "", "the input is a single sample already")
    return _other_input_verdict("batch_consistency", probe, probe.input[:1], condition="at batch size 1")


def _parameter_storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


@_on_reduced_input(per_layer=False)
def check_deepcopy(probe: Probe) -> list[CheckResult]:
    """``copy.deepcopy`` of a used extractor gives an independent one with the true values
    and as many parameters, and the original keeps working.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "deepcopy"
    twin = None
    try:
        with _attached(probe) as extractor:
            extractor(probe.previous_input)
            try:
                twin = copy.deepcopy(extractor)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "deepcopy_failed", _failure(exc))]
            try:
                got_twin = snapshot(twin(probe.input).features)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"the copy: {_failure(exc)}")]
            got_original = snapshot(extractor(probe.input).features)
            mine, theirs = _parameter_storages(extractor.module), _parameter_storages(twin.module)
            modes = (extractor.module.training, twin.module.training)
            kinds = (type(extractor.module).__name__, type(twin.module).__name__)
            got_in_original_mode = None
            if modes[0] != modes[1]:  # the mechanism to measure: another copy, set to the original's mode before its first call
                fresh = copy.deepcopy(extractor)
                fresh.module.train(modes[0])
                got_in_original_mode = snapshot(fresh(probe.input).features)
                fresh.close()
    finally:
        if twin is not None:
            with contextlib.suppress(Exception):
                twin.close()
    notes = []  # (diagnosis, what was seen)
    if len(theirs) != len(mine):
        notes.append(("parameters_not_copied", f"the copy holds {len(theirs)} parameter tensors, the original {len(mine)}"))
    if mine & theirs:
        notes.append(("parameters_shared", f"the copy shares {len(mine & theirs)} parameter tensors with the original"))
    if modes[0] != modes[1]:
        mode = {True: "train", False: "eval"}
        notes.append(("mode_changed", f"the copy ({kinds[1]}) is in {mode[modes[1]]} mode, the original ({kinds[0]}) in {mode[modes[0]]} mode"))
    rows = _request_verdict(check, probe, got_twin, context="the copy")
    original = _request_verdict(check, probe, got_original, context="the original after the copy ran")
    row = rows[0]
    if original[0].status == "fail":
        row.status, row.diagnosis = "fail", row.diagnosis or original[0].diagnosis
        row.detail = f"{row.detail}; {original[0].detail}"
    if got_in_original_mode is not None and row.status == "fail":
        again = _request_verdict(check, probe, got_in_original_mode, context="the copy set to the original's mode")[0]
        if again.status == "pass":
            row.diagnosis = "mode_changed"
            notes.append(("mode_changed", "another copy, set to the original's mode before its first call, gives the truth"))
    if notes:
        row.status, row.diagnosis = "fail", row.diagnosis if row.diagnosis not in ("", UNEXPLAINED) else notes[0][0]
        row.detail = "; ".join([row.detail, *(text for _, text in notes)])
    return rows


def _scramble(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model


@_on_reduced_input(per_layer=False)
def check_state_dict(probe: Probe) -> list[CheckResult]:
    """The extractor's state dict loads into a fresh extractor (built on other weights),
    which then gives the true values; key names are compared with the model's.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "state_dict"
    with _attached(probe) as extractor:
        state = extractor.module.state_dict()
    model_keys = list(probe.model.state_dict())
    absent = [key for key in model_keys if key not in state]
    extra = [key for key in state if key not in set(model_keys)]
    if absent or extra:
        keys_note = (f"keys differ from the model's, so the model's checkpoint does not load strictly: "
                     f"{len(absent)} of the model's absent{f' (e.g. {absent[0]})' if absent else ''}, "
                     f"{len(extra)} others{f' (e.g. {extra[0]})' if extra else ''}")
    else:
        keys_note = "the same keys as the model's state dict"
    try:
        with _attached(probe, model=_scramble(deep_copy(probe.model))) as fresh:
            try:
                fresh.module.load_state_dict(state)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "load_failed", f"{_failure(exc)}; {keys_note}")]
            got = snapshot(fresh(probe.input).features)
    except Exception as exc:
        return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"the fresh extractor: {_failure(exc)}")]
    return _request_verdict(check, probe, got, context="loaded into a fresh extractor", notes=[keys_note])


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
    with _attached(probe, model=deep_copy(probe.model).cpu()) as extractor:
        extractor.module.to("cuda")
        try:
            got = snapshot(extractor(on_gpu).features)
        except Exception as exc:
            return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"after .to('cuda'): {_failure(exc)}")]
    moved = dataclasses.replace(probe, truth=truth)
    return _request_verdict(check, moved, got, context="moved to CUDA")


def check_mode_graphs(probe: Probe) -> list[CheckResult]:
    """Where the model's train and eval passes run other nodes, a strategy that takes other layers
    in each mode (FX's train_return_nodes and eval_return_nodes) gives the truth in both modes."""
    check = "mode_graphs"
    tables = probe.oracle(check, lambda: {mode: node_table(probe.model, example=probe.input, tracer_kwargs=probe.tracer_kwargs, train=mode == "train")
                                          for mode in ("train", "eval")})
    if [n.name for n in tables["train"].nodes if n.tensor] == [n.name for n in tables["eval"].nodes if n.tensor]:
        return [CheckResult(check, ALL_LAYERS, "skipped", "", "the model runs the same nodes in train and eval mode")]
    attach_per_mode = getattr(probe.strategy, "attach_per_mode", None)
    if attach_per_mode is None:
        return [CheckResult(check, ALL_LAYERS, "unsupported", "", "the strategy takes one list of layers for both modes (train_mode judges the layers that run in both)")]
    taps = [layer if isinstance(layer, Tap) else Tap(layer) for layer in probe.requested]
    layers = {mode: [tap for tap in taps if runs_in(tap, tables[mode])] for mode in tables}
    try:
        extractor = PinnedExtractor(attach_per_mode(deep_copy(probe.model), train_layers=layers["train"], eval_layers=layers["eval"], tracer_kwargs=probe.tracer_kwargs))
        extractor.module.train()
        features = {"train": snapshot(extractor(probe.input).features)}
        extractor.module.eval()
        features["eval"] = snapshot(extractor(probe.input).features)
        extractor.close()
    except Exception as exc:
        return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"attached per mode: {_failure(exc)}")]

    def truth(mode: str) -> OracleCapture:
        model = deep_copy(probe.model).train(mode == "train")
        return capture(model, probe.input, layers=layers[mode], on_copy=False, tracer_kwargs=probe.tracer_kwargs)

    truths = probe.oracle(f"{check}:truths", lambda: {mode: truth(mode) for mode in tables})
    verdicts = [(mode, _judge(check, tap, features[mode], truths[mode].layers[tap].value, context=f"{mode} mode")) for mode in tables for tap in layers[mode]]
    failed = [row for _, row in verdicts if row.status == "fail"]
    counts = ", ".join(f"{len(layers[mode])} in {mode} mode" for mode in tables)
    if failed:
        shown = "; ".join(row.detail for row in failed[:4])
        return [CheckResult(check, ALL_LAYERS, "fail", failed[0].diagnosis, f"{len(failed)} of {len(verdicts)} wrong ({counts}): {shown}")]
    return [CheckResult(check, ALL_LAYERS, "pass", "", f"the truth in both modes: {counts}")]


def _autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@_on_reduced_input(per_layer=True)
def check_autocast(probe: Probe) -> list[CheckResult]:
    """Under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA) the features equal the
    oracle's under the same autocast, in value and dtype, within that dtype's tolerance
    (``compare.tolerance``: rtol 1.6e-2 for bfloat16, 1e-3 for float16; ten times on CUDA).

    It runs on the reduced input (:meth:`Probe.on_reduced_input`): autocast changes dtypes, not how the
    examples of a batch meet (``batch_consistency`` asks that) nor what the size does
    (``input_size``), and a bfloat16 forward on a CPU without native bfloat16 kernels costs
    many float32 ones (46 for a ResNet-18 on an AVX2 CPU)."""
    check, device = "autocast", probe.input.device
    dtype = _autocast_dtype(device)
    x = probe.input
    context = f"under autocast({device.type}, {str(dtype).removeprefix('torch.')}){_at_size(x)}"

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype)

    def oracle(layers: list[str]) -> OracleCapture:
        with autocast():
            return capture(probe.model, x, layers=layers, tracer_kwargs=probe.tracer_kwargs)

    try:
        truth = probe.oracle_for_layers(check, oracle)
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails {context}: {exc}")
    try:
        with _attached(probe) as extractor, autocast():
            got = snapshot(extractor(x).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"{context}: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        row = _judge(check, layer, got, truth.layers[layer].value, context=context)
        value, true = got.get(layer), truth.layers[layer].value
        if row.diagnosis == UNEXPLAINED and isinstance(value, torch.Tensor) and isinstance(true, torch.Tensor) and value.dtype != true.dtype:
            if compare(value.to(true.dtype), true).close:  # the autocast value, cast: reproduced by casting it back
                return CheckResult(check, layer, "fail", "cast", f"{context}: the autocast value, in {str(value.dtype).removeprefix('torch.')} "
                                   f"instead of {str(true.dtype).removeprefix('torch.')}", max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)
        return row

    return _per_layer(check, probe, judge)


def _memory_format(value: Any) -> str:
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        return ""
    if value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous():
        return "channels_last"
    return "contiguous" if value.is_contiguous() else "strided"


@_on_reduced_input(per_layer=True)
def check_channels_last(probe: Probe) -> list[CheckResult]:
    """With the model and the input in ``channels_last`` the features are the truth there; the
    detail says whether each feature keeps the memory format the model's own output has.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "channels_last"
    if probe.input.dim() != 4:
        return _all_layers(check, probe, "skipped", "", "the input is not a 4-d image batch")
    x = probe.input.contiguous(memory_format=torch.channels_last)

    def in_channels_last() -> nn.Module:
        return deep_copy(probe.model).to(memory_format=torch.channels_last)

    try:
        truth = probe.oracle_for_layers(check, lambda layers: capture(in_channels_last(), x, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs))
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails in channels_last: {exc}")
    try:
        with _attached(probe, model=in_channels_last()) as extractor:
            raw = extractor(x).features
            formats = {layer: _memory_format(value) for layer, value in raw.items()}
            got = snapshot(raw)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"in channels_last: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        row = _judge(check, layer, got, truth.layers[layer].value, context="in channels_last")
        true_format, returned = _memory_format(truth.layers[layer].value), formats.get(layer, "")
        if true_format and returned:
            row.detail += "; memory format kept" if returned == true_format else f"; memory format {true_format} returned as {returned}"
        return row

    return _per_layer(check, probe, judge)


@_on_reduced_input(per_layer=True)
def check_inference_mode(probe: Probe) -> list[CheckResult]:
    """Under ``torch.inference_mode()`` the extractor runs and gives the truth; afterwards its
    features work as values (read, cloned, used in new ops: in-place updates and autograd on
    inference tensors are refused by torch by design, and not asked) and the extractor works
    again outside it.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "inference_mode"
    try:
        with _attached(probe) as extractor:
            with torch.inference_mode():
                features = extractor(probe.input).features
            try:
                inside = {layer: _used(value) for layer, value in dict(features).items()}
            except Exception as exc:
                return _all_layers(check, probe, "fail", "unusable_after", f"a feature from inference_mode, used after it: {_failure(exc)}")
            try:
                after = snapshot(extractor(probe.input).features)
            except Exception as exc:
                return _all_layers(check, probe, "fail", "call_failed", f"called again after inference_mode: {_failure(exc)}")
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"under inference_mode: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        true = probe.truth.layers[layer].value
        row = _judge(check, layer, inside, true, context="under inference_mode")
        if row.status != "pass":
            return row
        again = _judge(check, layer, after, true, context="called again after it")
        return again if again.status != "pass" else CheckResult(check, layer, "pass", "", f"{row.detail}; {again.detail}",
                                                                  max_abs_err=row.max_abs_err, scale=row.scale, bitwise=row.bitwise)

    return _per_layer(check, probe, judge)


def _used(value: Any) -> Any:
    """``value`` used as a user would after ``inference_mode``: a new tensor computed from it."""
    return value * 1 if isinstance(value, torch.Tensor) else value


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
