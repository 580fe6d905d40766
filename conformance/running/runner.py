"""The run: models are built, the oracle captures, strategies extract, checks judge.

For each model (one resident at a time): build it once, capture the truth for two inputs,
then for each strategy run one isolated *unit*: attach to a deep copy, call it on the
previous input, the input and the previous input again, close it, run the value checks
(``checks.py``), then the behaviour checks (``behaviour/``), each under its own time
limit, and write the rows. A unit or check that fails or runs past its time limit becomes
rows with a reason; it never ends the run. Layers a strategy names as beyond its API are
``unsupported`` and the rest extracted without them; a request that fails or is refused as a
whole is retried one layer at a time, so each layer gets its own verdict, unless one request in
the order the model runs the layers, or without the layers that do not run or return more than
tensors (then requested alone), works in its place.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn

from strategies import StrategyUnavailable, Unsupported, get_strategy
from strategies.base import call_model

from conformance.judging.behaviour import BEHAVIOUR_CHECKS, Probe, reductions
from conformance.judging.causes import explain, explain_whole, keep_lines_only, non_tensors, request_order, traced_optional_input
from conformance.judging.checks import CHECKS, model_changes, snapshot, tensor_digest, tensor_digests
from conformance.judging.context import ALL_LAYERS, CheckContext, CheckResult, StrategyPass
from conformance.core.compare import bitwise_equal, is_close
from conformance.core.errors import ConformanceError
from conformance.core.fxtraces import TraceCache, reusing_fx_traces
from conformance.core.timmbuilds import BuildCache, reusing_timm_builds
from conformance.core.jitscans import ScanCache, reusing_script_scans
from conformance.truth.layers import resolve_layers
from conformance.judging.diagnoses import graph_ops, norm_modules
from conformance.truth.nodes import Node, record
from conformance.truth.oracle import OracleCapture, capture, capture_twice, counterfactual, keep_first_inputs, locate, locate_nodes, module_inputs, replay_children
from conformance.judging.profiles import PER_LAYER_CHECKS, PROFILES
from conformance.core.rng import PinnedExtractor, RecordDraws, draws_random_numbers, pass_rng
from conformance.core.copies import SharedParameters, unpacking_once
from conformance.core.timing import Timings, deep_copy, oracle_sharing, sharing_parameters, strategy_copy
from conformance.zoo.specs import BIG_MODEL_PARAMS, INPUT_KINDS, ModelSpec, build_model, has_lazy_state, materialise

__all__ = ["RunConfig", "crashed_units", "evaluate", "make_deterministic", "model_units"]


@dataclass
class RunConfig:
    """What to run."""

    models: list[ModelSpec]
    layers: list[str]
    strategies: list[str]
    checks: list[str]
    device: str = "cpu"
    seed: int = 0
    cell_timeout: float = 300.0
    include_big: bool = False


class CellTimeout(Exception):
    """A unit ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CellTimeout` in the main thread after ``seconds`` (no limit elsewhere)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CellTimeout(f"ran past the {seconds:g} s cell time limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_deterministic(*, seed: int, threads: int) -> None:
    """Fixed seed and thread count, deterministic kernels where torch has them, no TF32."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _rows_for(layers: Sequence[str], checks: Sequence[str], status: str, diagnosis: str, detail: str, *, per_layer: bool = True, request_wide: bool = True) -> list[CheckResult]:
    rows = []
    for check in checks:
        if check in PER_LAYER_CHECKS and per_layer:
            rows.extend(CheckResult(check, layer, status, diagnosis, detail) for layer in layers)
        elif check not in PER_LAYER_CHECKS and request_wide:
            rows.append(CheckResult(check, ALL_LAYERS, status, diagnosis, detail))
    return rows


@dataclass
class _Attempt:
    """One extraction request: the context for the checks, or why there is none."""

    layers: list[str]
    context: CheckContext | None = None
    status: str = ""
    diagnosis: str = ""
    detail: str = ""
    unsupported_layers: list[str] | None = None
    reasons: dict[str, str] = field(default_factory=dict)  # an unsupported layer's own reason
    exception: BaseException | None = None  # what an errored request raised
    checked: list[CheckResult] | None = None  # its value rows, where they were taken at once and the context let go

    @property
    def extracted(self) -> bool:
        return self.context is not None or self.checked is not None

    def explained(self, cause: tuple[str, str] | None) -> None:
        """Name the cause of the error (``causes.py``), keeping what raised in the detail."""
        if cause is not None:
            self.diagnosis, self.detail = cause


def _matcher(exact: bool) -> Callable[[Any, Any], bool]:
    return bitwise_equal if exact else is_close


class _ModelRun:
    """One built model, its truth, and the units of its strategies."""

    def __init__(self, *, spec: ModelSpec, model: nn.Module, layers: list[str], config: RunConfig, timings: Timings) -> None:
        self.spec, self.model, self.layers, self.config, self.timings = spec, model, layers, config, timings
        self.previous_input, self.input = spec.inputs(seed=config.seed, device=config.device)
        self.previous_truth = capture(model, self.previous_input, layers=layers, tracer_kwargs=spec.tracer_kwargs)
        self.truth: OracleCapture = capture_twice(model, self.input, layers=layers, tracer_kwargs=spec.tracer_kwargs)
        # a plain chain of children replays without error; only a broken one is replayed
        self.replayed, self.replayed_after, self.replay_error = (
            replay_children(model, self.input, layers=layers) if self.truth.chain_break else ({}, {}, None))
        self.unpacked: dict = {}  # each quantized convolution's weights, unpacked once for the digests (copies.unpacking_once)
        with timings.phase("hashing"), unpacking_once(self.unpacked):
            self.model_state = model.state_dict()  # the model's own tensors, not copies
            self.model_digests = tensor_digests(model, state=self.model_state)
        self.aliases = _aliases(model, layers)
        self.draws_random = draws_random_numbers(model, self.input)
        self.oracle_memo: dict = {}  # truths under the behaviour checks' conditions, shared by the strategies
        self.diagnosis_memo: dict = {}  # what the diagnoses measured on this model
        with timings.phase("copy"):
            self.shared: SharedParameters | None = SharedParameters(model)  # the parameters the strategies' copies hold
            self.copy_reference = self.shared.state(self.model_state)  # a copy's state, found by memory

    def locate(self, value: torch.Tensor, *, exact: bool = False, along: Callable[[], list[torch.Tensor]] = list) -> list[str]:
        """Modules of the model whose output, for the input, is ``value`` (within the values
        tolerance; bit for bit where ``exact``), once per value and model: strategies often
        return the same wrong value. The values ``along`` gives (the unit's other wrong
        features, which its diagnoses will likely look for next) are searched in the same pass."""
        return self._search("locate", value, exact=exact, along=along, search=lambda values: locate(
            self.model, self.input, values, close=_matcher(exact)))

    def locate_nodes(self, value: torch.Tensor, *, exact: bool = False, along: Callable[[], list[torch.Tensor]] = list,
                     skip_nodes: tuple[str, ...] = ()) -> list[str]:
        """Nodes of the forward pass whose value, for the input, is ``value`` (as :meth:`locate`);
        of the pass without the nodes ``skip_nodes`` where given."""
        return self._search(("locate_nodes", skip_nodes), value, exact=exact, along=along, search=lambda values: locate_nodes(
            self.model, self.input, values, close=_matcher(exact), tracer_kwargs=self.spec.tracer_kwargs, skip_nodes=skip_nodes))

    def _search(self, kind: Any, value: torch.Tensor, *, exact: bool, along: Callable[[], list[torch.Tensor]],
                search: Callable[[list[torch.Tensor]], list[list[str]]]) -> list[str]:
        with self.timings.phase("diagnoses"):
            key = (kind, exact, tensor_digest(value))
            if key not in self.diagnosis_memo:
                pending = {key: value}
                for other in along():
                    pending.setdefault((kind, exact, tensor_digest(other)), other)
                pending = {k: v for k, v in pending.items() if k not in self.diagnosis_memo}
                self.diagnosis_memo.update(zip(pending, search(list(pending.values()))))
            return self.diagnosis_memo[key]

    def _memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """What a diagnosis measures, once per model, shared by its strategies."""
        if key not in self.diagnosis_memo:
            with self.timings.phase("diagnoses"):
                self.diagnosis_memo[key] = compute()
        return self.diagnosis_memo[key]

    def small_truth(self) -> tuple[Any, Any]:
        """An input and the model's output for it, for the model-changes measurement, whose
        question (is the output still the truth after the extractor is closed) the batch and the
        size do not enter into: the first of :func:`~conformance.judging.behaviour.reductions` the model
        takes; the input itself where it is not one tensor or the model takes no reduction."""
        if "small_truth" not in self.oracle_memo:
            found = (self.input, self.truth.output)
            for x in reductions(self.input) if isinstance(self.input, torch.Tensor) else ():
                try:
                    found = (x, capture(self.model, x, layers=[], tracer_kwargs=self.spec.tracer_kwargs).output)
                    break
                except Exception:  # the model does not take this size; try the next
                    continue
            self.oracle_memo["small_truth"] = found
        return self.oracle_memo["small_truth"]

    def droppable_nodes(self) -> list[Node]:
        """The calls of the eager pass that can change a value while their result goes unused:
        in-place ops and functions FX keeps whole."""
        def compute() -> list[Node]:
            with torch.no_grad(), pass_rng():
                table = record(deep_copy(self.model), self.input, tracer_kwargs=self.spec.tracer_kwargs)
            return [node for node in table.nodes if node.kind == "function" and (node.inplace or node.kept_whole)]
        return self._memo(("droppable",), compute)

    def counterfactual(self, **change: Any) -> dict[str, Any] | None:
        key = tuple(sorted((name, id(value) if isinstance(value, (dict, list)) else value) for name, value in change.items()))  # by identity
        return self._memo(("counterfactual", *key), lambda: counterfactual(
            self.model, self.input, layers=self.layers, tracer_kwargs=self.spec.tracer_kwargs, **change))

    def strategy_pass(self, strategy_name: str, layers: list[str]) -> StrategyPass:
        """A pass of the strategy, attached anew to a copy of the model, on the input, recording
        what its own modules did: each norm's calls (input and output, cloned), the first input of
        its modules that stand for the requested modules and their ancestors (the same path, or the
        path under one prefix of its own: ``swin.encoder``)."""
        def measure() -> StrategyPass:
            extractor = PinnedExtractor(get_strategy(strategy_name).attach(strategy_copy(self.model), layers=layers, tracer_kwargs=self.spec.tracer_kwargs))
            norms = dict(norm_modules(extractor.module))
            calls: dict[str, list[tuple[Any, Any]]] = {name: [] for name in norms}
            inputs: dict[str, Any] = {}
            handles = [norm.register_forward_hook(lambda norm, args, output, name=name: calls[name].append(
                (args[0].detach().clone() if args and isinstance(args[0], torch.Tensor) else None,
                 output.detach().clone() if isinstance(output, torch.Tensor) else None))) for name, norm in norms.items()]
            handles += keep_first_inputs(_counterparts(extractor.module, self._module_ancestors(layers)), inputs)
            try:
                with torch.no_grad():
                    extractor(self.input)
            finally:
                for handle in handles:
                    handle.remove()
                extractor.close()
            return StrategyPass([(name, type(norms[name]).__name__, [(seen, out) for seen, out in recorded if out is not None])
                                 for name, recorded in calls.items() if recorded], inputs)

        def measured() -> StrategyPass:
            try:
                return measure()
            except Exception:  # a pass that fails instrumented (or at all) measures nothing: its diagnoses name nothing
                return StrategyPass()

        return self._memo(("strategy_pass", strategy_name, tuple(layers)), measured)

    def _module_ancestors(self, layers: Sequence[str]) -> list[str]:
        """The requested modules of the model and every module above them."""
        modules = dict(self.model.named_modules())
        return list(dict.fromkeys(".".join(layer.split(".")[:depth]) for layer in layers if layer in modules for depth in range(1, layer.count(".") + 2)))

    def model_inputs(self, paths: tuple[str, ...]) -> dict[str, Any]:
        """The first input of each of the model's modules ``paths`` in a pass of a copy, on the input."""
        return self._memo(("model_inputs", paths), lambda: module_inputs(deep_copy(self.model), self.input, modules=list(paths)))

    def attempt(self, strategy_name: str, layers: list[str]) -> _Attempt:
        """One request on a fresh deep copy of the model (``_request``), holding nothing of
        the copy once it failed: an exception's traceback keeps the frames it unwound alive,
        and with them the copy and its traced graph."""
        attempt = self._request(strategy_name, layers)
        if attempt.exception is not None:
            keep_lines_only(attempt.exception)
        return attempt

    def _request(self, strategy_name: str, layers: list[str]) -> _Attempt:
        strategy = get_strategy(strategy_name)
        refusal = strategy.refusal(self.model)  # what attach would raise first, asked without a copy
        if refusal is not None:
            return _Attempt(layers, status="unsupported", detail=refusal)
        model = strategy_copy(self.model)
        try:
            with self.timings.phase("tracing"):
                extractor = PinnedExtractor(strategy.attach(model, layers=layers, tracer_kwargs=self.spec.tracer_kwargs))
        except Unsupported as exc:
            return _Attempt(layers, status="unsupported", detail=str(exc), unsupported_layers=exc.layers,
                            reasons={layer: exc.reason_for(layer) for layer in exc.layers or ()})
        except CellTimeout:
            raise
        except Exception as exc:
            return _Attempt(layers, status="error", diagnosis="build_failed", detail=f"{type(exc).__name__}: {exc}", exception=exc)
        try:
            with self.timings.phase("forward"), torch.no_grad():
                with pass_rng():
                    attached_output = call_model(model, self.input)
                first = extractor(self.previous_input)
                first_features = snapshot(first.features)
                draws = RecordDraws() if self.draws_random else contextlib.nullcontext()
                with draws:  # what the model's random ops got in this very call: a strategy's draws may differ from call to call
                    second = extractor(self.input)
                features = snapshot(second.features)
                first_after_next = snapshot(first.features, reuse=first_features)
                repeat_features = snapshot(extractor(self.previous_input).features, reuse=first_features)
        except CellTimeout:
            raise
        except Unsupported as exc:  # the strategy cannot pass this model's input: for the layers it names, else whichever are asked for
            return _Attempt(layers, status="unsupported", detail=str(exc), unsupported_layers=exc.layers or list(layers),
                            reasons={layer: exc.reason_for(layer) for layer in exc.layers or ()})
        except Exception as exc:
            failed = _Attempt(layers, status="error", diagnosis="call_failed", detail=f"{type(exc).__name__}: {exc}", exception=exc)
            with self.timings.phase("diagnoses"):
                failed.explained(traced_optional_input(exc=exc, module=extractor.module, x=self.input))
            return failed
        finally:
            extractor.close()
        with self.timings.phase("hashing"), unpacking_once(self.unpacked):  # the copy as the strategy left it, then the tensors of the strategy's module
            copy_state = model.state_dict()
            copy_digests = tensor_digests(model, state=copy_state, reference=self.copy_reference, reference_digests=self.model_digests)
            strategy_digests = dict(copy_digests) if extractor.module is model else tensor_digests(  # hooks hold the copy itself
                extractor.module, reference=copy_state, reference_digests=copy_digests)

        def changes() -> list[str]:
            with self.timings.phase("checks"):
                return model_changes(pristine=self.model, model=model, truth=self.small_truth, digests=copy_digests, pristine_digests=self.model_digests,
                                     unsteady_output=self.truth.unsteady.get(""))

        @functools.cache
        def wrong() -> list[torch.Tensor]:
            """The features that are tensors and not the truth: what the diagnoses look for."""
            return [value for layer, value in features.items() if isinstance(value, torch.Tensor) and layer in self.truth.layers
                    and not is_close(value, self.truth.layers[layer].value)]

        context = CheckContext(
            layers=layers, truth=self.truth, previous_truth=self.previous_truth,
            features=features, returned_output=second.output, attached_output=attached_output,
            model_digests=self.model_digests, strategy_digests=strategy_digests, replayed=self.replayed, replayed_after=self.replayed_after, aliases=self.aliases,
            locate=functools.partial(self.locate, along=wrong), device=torch.device(self.config.device),
            first_features=first_features, first_after_next=first_after_next,
            same_container=second.features is first.features, repeat_features=repeat_features, measure_model_changes=changes,
            graph_ops=lambda: graph_ops(extractor.module), droppable_nodes=self.droppable_nodes,
            strategy_pass=functools.partial(self.strategy_pass, strategy_name, list(layers)), model_inputs=self.model_inputs,
            random_draws=draws.draws if isinstance(draws, RecordDraws) else [],
            counterfactual=self.counterfactual, locate_nodes=functools.partial(self.locate_nodes, along=wrong),
        )
        return _Attempt(layers, context=context)

    def unit(self, strategy_name: str) -> list[CheckResult]:
        """Every row of one (model, strategy) unit (:meth:`_unit`), the strategy's copies holding the
        shared parameters while the model shares them (:meth:`stop_sharing_if_written`)."""
        with sharing_parameters(self.shared):
            return self._unit(strategy_name)

    def stop_sharing_if_written(self) -> bool:
        """Whether the units since the model started sharing wrote into the shared parameters (an
        in-place op on them, or bytes no longer the model's); if so, what those units measured is
        forgotten and every later copy holds parameters of its own, so that the caller takes the
        units again. Measured once per model: the bytes comparison reads every weight twice."""
        with self.timings.phase("copy"):
            written = self.shared is not None and not self.shared.intact()
        if written:
            self.oracle_memo.clear()
            self.diagnosis_memo.clear()
            self.shared, self.copy_reference = None, self.model_state
        return written

    def _unit(self, strategy_name: str) -> list[CheckResult]:
        """Every row of one (model, strategy) unit.

        A request the strategy can express for some layers only is narrowed to those (the
        others are ``unsupported``); a request that fails as a whole is retried one layer
        at a time, so that each layer gets its own verdict, unless one request works in its
        place (``_retry``: in the order the model runs them; without the layers that do not run
        or return more than tensors, which are then requested alone). The behaviour checks
        then act on the request that works.
        """
        value_checks = self._value_checks
        behaviour_checks = [c for c in self.config.checks if c in BEHAVIOUR_CHECKS]
        try:
            with self.timings.phase("imports"):  # the strategy's package, on its first use in this process
                get_strategy(strategy_name)
        except StrategyUnavailable as exc:
            return _rows_for(self.layers, self.config.checks, "skipped", "unavailable", str(exc))
        rows: list[CheckResult] = []
        try:
            with time_limit(self.config.cell_timeout):
                combined = self.attempt(strategy_name, self.layers)
                while combined.status == "unsupported" and combined.unsupported_layers:
                    named = [layer for layer in combined.layers if layer in set(combined.unsupported_layers)]
                    rest = [layer for layer in combined.layers if layer not in set(named)]
                    if not named or not rest:
                        break
                    for layer in named:
                        rows += _rows_for([layer], self.config.checks, "unsupported", "", combined.reasons[layer], request_wide=False)
                    combined = self.attempt(strategy_name, rest)
                retried, retry_note, alone = None, "", []
                refused_whole = combined.status == "unsupported" and combined.unsupported_layers is None
                if combined.context is None and (combined.status == "error" or refused_whole) and len(combined.layers) > 1:
                    retried, retry_note, alone = self._retry(strategy_name, combined)
                self._explain(combined, alone, retried)
                if retried is not None and combined.exception is not None and set(retried.layers) == set(combined.layers):
                    combined.explained(request_order(exc=combined.exception, in_order=retried.layers))
                working = retried or combined
                working_layers = [*(retried.layers if retried else ()), *(a.layers[0] for a in alone if a.extracted)]
                if behaviour_checks and alone and working_layers and (working is combined or working_layers != working.layers):
                    working = self.attempt(strategy_name, working_layers)
                    if working.context is None and self.truth.run_order(working_layers) != working_layers:  # nnsight: in run order only
                        working = self.attempt(strategy_name, self.truth.run_order(working_layers))
        except CellTimeout as exc:
            return _rows_for(self.layers, self.config.checks, "error", "timeout", str(exc))
        with self.timings.phase("checks"):
            rows += self._rows(combined, value_checks, per_layer=not (alone or retried), request_wide=True)
            why = "was refused" if refused_whole else "failed"
            if retried is not None:
                for row in self._rows(retried, value_checks, per_layer=True, request_wide=False):
                    row.detail = f"{retry_note}, as the whole request {why}; {row.detail}".rstrip("; ")
                    rows.append(row)
            for attempt in alone:
                for row in self._rows(attempt, value_checks, per_layer=True, request_wide=False):
                    row.detail = f"requested alone, as the whole request {why}; {row.detail}".rstrip("; ")
                    rows.append(row)
        if behaviour_checks and self.spec.input_kind != "tensor":
            rows += _rows_for(self.layers, behaviour_checks, "skipped", "structured_input",
                              f"the behaviour checks change one input tensor (its size, layout, gradients); the model takes "
                              f"{INPUT_KINDS[self.spec.input_kind]}")
        elif behaviour_checks:
            rows += self._behaviour_rows(strategy_name, behaviour_checks, working, alone)
        return rows

    def _retry(self, strategy_name: str, combined: _Attempt) -> tuple[_Attempt | None, str, list[_Attempt]]:
        """After ``combined`` failed or was refused as a whole: one request that works in its
        place, with how it differs (the same layers in the order the model runs them; else the
        request without the layers that do not run or return more than tensors, as given, then
        in run order, which are then requested alone); where no such request works, every layer alone."""
        suspects = [layer for layer in combined.layers if self._not_run(layer) or non_tensors(self._output(layer))]
        others = [layer for layer in combined.layers if layer not in set(suspects)]
        raised = combined.exception is not None  # a refusal is no question of order
        in_order = self.truth.run_order(combined.layers)
        if raised and in_order != combined.layers:
            reordered = self.attempt(strategy_name, in_order)
            if reordered.context is not None:
                return reordered, "requested in the order the model runs them", []
        if suspects and others:
            without = self.attempt(strategy_name, others)
            note = f"requested without the {len(suspects)} layers that do not run or return more than tensors"
            if without.context is None and raised and self.truth.run_order(others) != others:
                without = self.attempt(strategy_name, self.truth.run_order(others))
                note += " and in the order the model runs them"
            if without.context is not None:
                return without, note, [self._alone(strategy_name, layer) for layer in suspects]
        return None, "", [self._alone(strategy_name, layer) for layer in combined.layers]

    def _alone(self, strategy_name: str, layer: str) -> _Attempt:
        """``layer`` requested alone, its value rows taken at once: a unit can request hundreds
        of layers alone, and each extraction holds a copy of the model until it is checked."""
        attempt = self.attempt(strategy_name, [layer])
        if attempt.context is not None:
            with self.timings.phase("checks"):
                attempt.checked = self._rows(attempt, self._value_checks, per_layer=True, request_wide=False)
            attempt.context = None
        return attempt

    @property
    def _value_checks(self) -> list[str]:
        return [check for check in self.config.checks if check in CHECKS]

    def _not_run(self, layer: str) -> bool:
        truth = self.truth.layers.get(layer)
        return truth is not None and not truth.calls

    def _output(self, layer: str) -> Any:
        truth = self.truth.layers.get(layer)
        return truth.value if truth is not None else None

    def _explain(self, combined: _Attempt, alone: list[_Attempt], retried: _Attempt | None) -> None:
        """Name the causes of the errored attempts (``causes.py``); ``retried``: the request
        that worked in place of ``combined`` (``_retry``)."""
        replay_error = lambda: self.replay_error  # noqa: E731
        worked = {attempt.layers[0] for attempt in alone if attempt.extracted} | set(retried.layers if retried else ())
        causes = {}
        for attempt in alone:
            if attempt.exception is not None:
                causes[attempt.layers[0]] = explain(exc=attempt.exception, layers=attempt.layers, not_run=self._not_run,
                                                    replay_error=replay_error, works_elsewhere=bool(worked), outputs=self._output)
                attempt.explained(causes[attempt.layers[0]])
        if combined.exception is not None:
            whole = explain(exc=combined.exception, layers=combined.layers, not_run=self._not_run, replay_error=replay_error,
                            works_elsewhere=False, outputs=self._output)
            reordered = retried is not None and retried.layers != [layer for layer in combined.layers if layer in set(retried.layers)]
            combined.explained(explain_whole(exc=combined.exception, whole=whole, worked=worked, alone=causes, reordered=reordered))

    def _behaviour_rows(self, strategy_name: str, checks: list[str], working: _Attempt, alone: list[_Attempt]) -> list[CheckResult]:
        """The behaviour checks on the request that works; layers that cannot be extracted
        at all get the status of their extraction."""
        rows, covered = [], set()
        for attempt in alone:
            if not attempt.extracted:
                rows += _rows_for(attempt.layers, checks, attempt.status, attempt.diagnosis, f"cannot be extracted: {attempt.detail}", request_wide=False)
                covered.update(attempt.layers)
        if working.context is None:
            uncovered = [layer for layer in working.layers if layer not in covered]
            return rows + _rows_for(uncovered, checks, working.status, working.diagnosis, f"cannot be extracted: {working.detail}")
        ctx = working.context
        probe = Probe(
            strategy=get_strategy(strategy_name), model=self.model, layers=working.layers, requested=self.layers, untrusted=_untrusted(ctx),
            tracer_kwargs=self.spec.tracer_kwargs,
            input=self.input, previous_input=self.previous_input, truth=self.truth, previous_truth=self.previous_truth,
            model_digests=self.model_digests, leaves_model_untouched=not ctx.model_changes,
            seed=self.config.seed, memo=self.oracle_memo, unsteady=self.truth.unsteady,
        )
        for check in checks:
            with self.timings.phase(f"behaviour.{check}"), time_limit(self.config.cell_timeout), torch.no_grad():
                rows += _guarded(check, working.layers, lambda: BEHAVIOUR_CHECKS[check](probe))
        return rows

    def _rows(self, attempt: _Attempt, checks: Sequence[str], *, per_layer: bool, request_wide: bool) -> list[CheckResult]:
        if attempt.checked is not None:
            return attempt.checked
        if attempt.context is not None:
            return [
                row
                for check in checks
                if (per_layer if check in PER_LAYER_CHECKS else request_wide)
                for row in _run_check(check, attempt)
            ]
        rows = _rows_for(attempt.layers, checks, attempt.status, attempt.diagnosis, attempt.detail, per_layer=per_layer, request_wide=request_wide)
        if attempt.diagnosis == "children_not_chained" and self.truth.chain_break is not None:
            for row in rows:
                if row.layer != ALL_LAYERS and self.truth.after_chain_break(row.layer):
                    row.detail = f"{row.detail}; the model is no plain chain of its children: {self.truth.chain_break.reason}"
        return rows


def _counterparts(module: nn.Module, paths: Sequence[str]) -> dict[str, nn.Module]:
    """The modules of a strategy's ``module`` that stand for the model's ``paths``: the same path,
    or the path under one name of its own (a backbone's ``swin.encoder`` for ``encoder``)."""
    own = dict(module.named_modules())
    found = {}
    for path in paths:
        matches = [name for name in own if name == path or (name.endswith(f".{path}") and name.count(".") == path.count(".") + 1)]
        if len(matches) == 1:
            found[path] = own[matches[0]]
    return found


def _aliases(model: nn.Module, layers: Sequence[str]) -> dict[str, list[str]]:
    """For each layer whose module is registered under more than one name, those names."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    found = {}
    for layer in layers:
        module = getattr(layer, "module", layer)
        with contextlib.suppress(AttributeError):
            paths = names.get(id(model.get_submodule(module)), []) if module else []
            if len(paths) > 1:
                found[str(layer)] = paths
    return found


def _untrusted(ctx: CheckContext) -> dict[str, str]:
    """Layers whose eval-mode values are wrong, with a short reason."""
    untrusted = {}
    for layer in ctx.layers:
        truth = ctx.truth.layers[layer]
        if layer in ctx.truth.unsteady:
            untrusted[layer] = "the model gives another value from the same random state"
        elif not truth.calls:
            if layer in ctx.features:
                untrusted[layer] = "a value for a module that does not run"
        elif layer not in ctx.features:
            untrusted[layer] = "no value returned"
        elif not ctx.against_truth(layer).close:
            untrusted[layer] = "the values check fails"
    return untrusted


def _run_check(check: str, attempt: _Attempt) -> list[CheckResult]:
    return _guarded(check, attempt.layers, lambda: CHECKS[check](attempt.context))


def _guarded(check: str, layers: Sequence[str], run_check: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """The check's rows; a check that crashes or runs out of time is a row, not the end of the run."""
    try:
        return run_check()
    except CellTimeout as exc:
        return _rows_for(layers, [check], "error", "timeout", str(exc))
    except Exception as exc:
        return _rows_for(layers, [check], "error", "check_failed", f"{type(exc).__name__}: {exc}")


def crashed_units(strategies: list[str], config: RunConfig, detail: str) -> list[tuple[str, list[CheckResult]]]:
    """The units of a model whose worker died before it gave them back."""
    return [(strategy_name, _rows_for([ALL_LAYERS], config.checks, "error", "worker_crashed", detail)) for strategy_name in strategies]


def model_units(
    spec: ModelSpec, strategies: list[str], config: RunConfig, timings: Timings, *, strict_layers: bool | None = None
) -> Iterator[tuple[str, list[CheckResult]]]:
    """``(strategy, rows)`` for each unit of one model, once all of them have run. The oracle's copies
    hold one set of the model's parameters, and the strategies' copies another (``SharedParameters``);
    both are measured once at the end. Where the oracle's was written (the model writes into its
    own weights), the model is taken again with the oracle's copies on parameters of their own;
    where a unit wrote into the strategies', every unit is taken again on copies of their own. A
    model that cannot run gives rows saying why.

    A layer the model lacks is bad input (an error) when ``strict_layers`` (default: the run
    has this one model), and ``skipped`` rows otherwise."""
    if strict_layers is None:
        strict_layers = len(config.models) == 1
    def everywhere(status: str, diagnosis: str, detail: str) -> Iterator[tuple[str, list[CheckResult]]]:
        for strategy_name in strategies:
            yield strategy_name, _rows_for([ALL_LAYERS], config.checks, status, diagnosis, detail)

    def too_big(count: int) -> Iterator[tuple[str, list[CheckResult]]]:
        yield from everywhere("skipped", "big_model", f"{count / 1e6:.0f}M parameters (> {BIG_MODEL_PARAMS / 1e6:.0f}M); pass --include-big to run it")

    try:
        big = not config.include_big and spec.is_big  # counting the parameters builds the model (on the meta device)
    except ConformanceError:
        raise
    except Exception as exc:  # a constructor that fails (a missing package: DiNAT's natten)
        yield from everywhere("error", "model_build_failed", f"{type(exc).__name__}: {exc}")
        return
    if big:
        yield from too_big(spec.param_count or 0)
        return
    try:
        with timings.phase("model_build"):
            model = build_model(spec=spec, seed=config.seed).to(config.device)
    except ConformanceError:
        raise
    except Exception as exc:
        yield from everywhere("error", "model_build_failed", f"{type(exc).__name__}: {exc}")
        return
    if not config.include_big and spec.source != "user" and spec.param_count is None:  # the meta device could not build it
        count = sum(parameter.numel() for parameter in model.parameters())
        if count > BIG_MODEL_PARAMS:
            yield from too_big(count)
            return
    try:
        with timings.phase("model_build"):
            materialised = materialise(model, spec.inputs(seed=config.seed, device=config.device)[1])
    except Exception as exc:
        yield from everywhere("error", "oracle_failed", f"{type(exc).__name__}: {exc}")
        return
    try:
        with timings.active():
            layers = resolve_layers(model, spec, config.layers)
    except ConformanceError as exc:
        if strict_layers:
            raise
        yield from everywhere("skipped", "no_such_layer", str(exc).replace("\n", "; "))
        return
    except Exception as exc:  # the layer sets could not be worked out on this model: rows, not the end of the run
        yield from everywhere("error", "layers_failed", f"{type(exc).__name__}: {exc}")
        return
    traces = TraceCache()  # one FX trace per structure of this model, shared by fx and timm-fx's checks
    scans = ScanCache()  # TorchScript's scans of each method and class, shared by every strategy's jit_script check
    builds = BuildCache()  # one timm build per architecture and arguments, for timm features_only's checks

    def unit(model_run: _ModelRun, oracle_parameters: SharedParameters | None, strategy_name: str) -> list[CheckResult]:
        with (timings.strategy(strategy_name), timings.active(), oracle_sharing(oracle_parameters), reusing_fx_traces(traces),
              reusing_script_scans(scans), reusing_timm_builds(builds)):
            rows = model_run.unit(strategy_name)
        for row in rows if materialised else ():
            row.detail = "; ".join(filter(None, [row.detail, materialised]))
        return rows

    for oracle_shares in (True, False):  # the oracle's copies on one set of parameters of their own; where it was written, each its own
        with timings.active(), timings.phase("copy"):
            oracle_parameters = SharedParameters(model) if oracle_shares else None
        try:
            with timings.active(), oracle_sharing(oracle_parameters):
                model_run = _ModelRun(spec=spec, model=model, layers=layers, config=config, timings=timings)
        except Exception as exc:
            if _written(oracle_parameters, timings):
                continue
            yield from everywhere("error", "oracle_failed", f"{type(exc).__name__}: {exc}")
            return
        units = [(name, unit(model_run, oracle_parameters, name)) for name in strategies]  # held until the shared parameters are measured
        if _written(oracle_parameters, timings):
            continue
        if model_run.stop_sharing_if_written():
            units = [(name, unit(model_run, oracle_parameters, name)) for name in strategies]
        yield from units
        return


def _written(shared: SharedParameters | None, timings: Timings) -> bool:
    """Whether something wrote into ``shared`` (None: nothing shared), measured in the ``copy`` phase."""
    with timings.active(), timings.phase("copy"):
        return shared is not None and not shared.intact()


def evaluate(
    model: nn.Module,
    *,
    layers: Sequence[str],
    strategies: Sequence[str],
    checks: Sequence[str] = PROFILES["default"],
    input_shape: Sequence[int] = (2, 3, 224, 224),
    device: str = "cpu",
    seed: int = 0,
    name: str = "model",
) -> pd.DataFrame:
    """Check ``strategies`` on one model in memory and return the tidy rows.

    The model is deep-copied first; the caller's instance is left as it is, except that lazy
    modules are materialised by one pass of the input first, as the model's own first call would.

    Example::

        >>> import torchvision
        >>> rows = evaluate(torchvision.models.resnet18(), layers=["bn1", "layer1"], strategies=["hooks", "fx"])
        >>> rows.query("check == 'values'")[["strategy", "layer", "status", "diagnosis"]]
    """
    spec = ModelSpec("user", name, tuple(input_shape), lambda: pristine)
    materialised = materialise(model, spec.inputs(seed=seed, device=device)[1]) if has_lazy_state(model) else ""  # a deep copy of one raises
    pristine = deep_copy(model)
    config = RunConfig(models=[spec], layers=list(layers), strategies=list(strategies), checks=list(checks), device=device, seed=seed)
    records = [
        {"model": name, "family": spec.family, "strategy": strategy_name, "device": device, **asdict(result)}
        for strategy_name, results in model_units(spec, config.strategies, config, Timings())
        for result in results
    ]
    for record in records if materialised else ():
        record["detail"] = "; ".join(filter(None, [record["detail"], materialised]))
    return pd.DataFrame.from_records(records)
