"""Negative controls: a deliberately corrupted strategy must be caught by each check."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import pitfalls
from conformance.judging.profiles import PROFILES
from conformance.running.runner import evaluate
from faults import corrupted, features_mapped, unchanged
from strategies import Extraction, Strategy

LAYERS = ["first", "second"]
FAST = PROFILES["fast"]


_noise = features_mapped(lambda v: v + 1e-3 * torch.randn_like(v))


def _other_layer(ex, module, x, extraction):
    features = dict(extraction.features)
    features["first"] = features["second"]
    return Extraction(features, extraction.output)


def _stale(ex, module, x, extraction):
    return Extraction(ex.calls[0], extraction.output)


_flattened = features_mapped(lambda v: v.flatten(1))
_double = features_mapped(lambda v: v.double())


def _reversed(ex, module, x, extraction):
    return Extraction(dict(reversed(list(extraction.features.items()))), extraction.output)


def _dropped(ex, module, x, extraction):
    return Extraction({"first": extraction.features["first"]}, extraction.output)


def _wrong_output(ex, module, x, extraction):
    return Extraction(extraction.features, extraction.output + 1.0)


def _tamper_model_output(model):
    model.second.register_forward_hook(lambda module, args, output: output * 2.0)


def _tamper_weights(model):
    with torch.no_grad():
        model.first.weight.add_(1e-3)


def _drifting(ex, module, x, extraction):
    """Right for the first two calls, off from the third on: state that accumulates."""
    return Extraction({k: v + (len(ex.calls) > 2) for k, v in extraction.features.items()}, extraction.output)


def _hook_left_behind(model):
    model.first.register_forward_hook(lambda module, args, output: None)


def _padding_changed(model):
    """A change that only the model's output shows: an attribute's value, not a new attribute, hook or tensor."""
    model.second.padding = (0, 0)


FAULTS = {
    # name: (corrupt, on_attach, check that must fail, layer, expected diagnosis)
    "noise": (_noise, None, "values", "first", "unexplained"),
    "other_layer": (_other_layer, None, "values", "first", "wrong_layer"),
    "stale": (_stale, None, "values", "first", "stale"),
    "flattened": (_flattened, None, "shape", "first", "reshaped"),
    "double": (_double, None, "dtype", "first", "cast"),
    "reversed": (_reversed, None, "keys", "*", "order"),
    "dropped": (_dropped, None, "keys", "*", "missing"),
    "wrong_output": (_wrong_output, None, "model_output", "*", "output_changed"),
    "tampered_model": (unchanged, _tamper_model_output, "model_output", "*", "output_changed"),
    "tampered_weights": (unchanged, _tamper_weights, "weights", "*", "weights_differ"),
    "drifting": (_drifting, None, "repeatable", "first", "not_repeatable"),
    "hook_left_behind": (unchanged, _hook_left_behind, "model_untouched", "*", "model_changed"),
    "padding_changed": (unchanged, _padding_changed, "model_untouched", "*", "model_changed"),
    "weights_changed": (unchanged, _tamper_weights, "model_untouched", "*", "model_changed"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_planted_fault_is_caught(fault, register):
    corrupt, on_attach, check, layer, diagnosis = FAULTS[fault]
    register(f"corrupted-{fault}", corrupted(corrupt, on_attach=on_attach))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=[f"corrupted-{fault}"], checks=FAST, input_shape=pitfalls.INPUT_SHAPE)
    row = rows[(rows.check == check) & (rows.layer == layer)].iloc[0]
    assert row.status == "fail", row.to_dict()
    assert row.diagnosis == diagnosis, row.to_dict()


@pytest.mark.parametrize("input_shape", [pitfalls.INPUT_SHAPE, (2, 3, 64, 64)])
def test_the_model_changes_pass_sees_the_output_on_the_reduced_input(input_shape, register):
    """After close, the model runs on the first example at half size where the input is 64 or
    more, against the truth for that input: a changed output is caught there, and an unchanged
    model passes (the reduced truth is the model's own)."""
    register("corrupted-padding", corrupted(unchanged, on_attach=_padding_changed))
    register("corrupted-none", corrupted(unchanged))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-padding", "corrupted-none"], checks=["model_untouched"], input_shape=input_shape)
    changed, untouched = (rows[rows.strategy == name].iloc[0] for name in ("corrupted-padding", "corrupted-none"))
    assert (changed.status, changed.diagnosis) == ("fail", "model_changed") and "the output differs" in changed.detail, changed.to_dict()
    assert untouched.status == "pass", untouched.to_dict()


def test_noise_is_measured_not_just_flagged(register):
    register("corrupted-noise", corrupted(_noise))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-noise"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    assert (rows["max_abs_err"] > 1e-5).all() and not rows["bitwise"].any()


def test_the_wrapper_itself_changes_nothing(register):
    """The control for the controls: the same wrapper with no fault passes everything."""
    register("corrupted-none", corrupted(unchanged))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-none"], checks=FAST, input_shape=pitfalls.INPUT_SHAPE)
    judged = rows[~rows.check.isin(["stale_results", "kwargs_and_tuples"])]  # hooks share one dict; nothing takes kwargs
    assert (judged["status"] == "pass").all(), judged[judged.status != "pass"].to_dict("records")


def test_a_crashing_strategy_is_a_row_with_a_reason(register):
    class Crashing(Strategy):
        def attach(self, model, *, layers, tracer_kwargs=None):
            raise RuntimeError("boom")

    register("crashing", Crashing)
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["crashing", "hooks"], checks=["values", "keys"], input_shape=pitfalls.INPUT_SHAPE)
    crashed = rows[rows.strategy == "crashing"]
    assert (crashed["status"] == "error").all() and crashed["detail"].str.contains("RuntimeError: boom").all()
    assert (rows[rows.strategy == "hooks"]["status"] == "pass").all()


def test_a_hanging_strategy_hits_the_cell_time_limit(register):
    import time

    from conformance.running.runner import RunConfig, model_units
    from conformance.core.timing import Timings
    from conformance.zoo.specs import ModelSpec

    class Hanging(Strategy):
        def attach(self, model, *, layers, tracer_kwargs=None):
            time.sleep(30)

    register("hanging", Hanging)
    spec = ModelSpec("user", "plain", pitfalls.INPUT_SHAPE, pitfalls.Plain)
    config = RunConfig(models=[spec], layers=LAYERS, strategies=["hanging"], checks=["values"], cell_timeout=0.5)
    started = time.perf_counter()
    [(name, results)] = list(model_units(spec, ["hanging"], config, Timings()))
    assert time.perf_counter() - started < 10
    assert {(r.status, r.diagnosis) for r in results} == {("error", "timeout")}


def test_nested_timing_phases_are_not_counted_twice():
    import time

    from conformance.core.timing import Timings

    timings = Timings()
    with timings.phase("checks"):
        time.sleep(0.05)
        with timings.phase("forward"):
            time.sleep(0.1)
    assert 0.09 < timings.seconds["forward"] < 0.2
    assert 0.04 < timings.seconds["checks"] < 0.09


def test_strategy_time_counts_its_units_whole_and_apart_from_the_phases():
    import time

    from conformance.core.timing import Timings

    timings = Timings()
    with timings.strategy("slow"), timings.phase("forward"):
        time.sleep(0.1)
    with timings.strategy("quick"):
        time.sleep(0.02)
    assert list(timings.strategy_split()) == ["slow", "quick"]
    assert 0.09 < timings.by_strategy["slow"] < 0.2 and 0.09 < timings.seconds["forward"] < 0.2
    assert timings.by_strategy["quick"] < timings.by_strategy["slow"]


def test_a_request_refused_as_a_whole_is_judged_layer_by_layer(register):
    """A strategy that refuses a request without naming the layers at fault hides nothing: each
    layer is asked alone, and a wrong one (here 'second', planted) fails instead of being 'unsupported'."""
    from strategies import Unsupported

    class OneAtATimeWrongSecond(Strategy):
        def attach(self, model, *, layers, tracer_kwargs=None):
            if len(layers) > 1:
                raise Unsupported("takes one layer at a time")
            return corrupted(features_mapped(lambda v: v + 1.0) if layers[0] == "second" else unchanged)().attach(model, layers=layers)

    register("one-at-a-time", OneAtATimeWrongSecond)
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["one-at-a-time"], checks=["values", "keys"], input_shape=pitfalls.INPUT_SHAPE)
    values = rows[rows.check == "values"].set_index("layer")
    assert values.loc["first", "status"] == "pass" and values.loc["second", "status"] == "fail"
    assert values["detail"].str.contains("requested alone, as the whole request was refused").all()
    assert rows[rows.check == "keys"]["status"].tolist() == ["unsupported"]  # the request as a whole


def test_layers_requested_alone_do_not_keep_their_copies_of_the_model(register):
    """Each request runs on its own deep copy of the model; a request that fails as a whole is
    retried layer by layer. No copy may outlive its request: a failure's traceback holds the
    frames that saw the copy, a working request's checks hold its extractor (on a detector at
    @leaves that was 160 copies, past the machine's memory)."""
    copies: list[weakref.ref] = []

    def strategy(*, keeps_copies: bool) -> type[Strategy]:
        kept = []

        class FailsWholeAndOddLayers(Strategy):
            def attach(self, model, *, layers, tracer_kwargs=None):
                gc.collect()
                alive.append(sum(ref() is not None for ref in copies))
                copies.append(weakref.ref(model))
                if keeps_copies:
                    kept.append(model)

                def fail(ex, module, x, extraction):
                    if len(layers) > 1 or int(str(layers[0])) % 2:
                        raise RuntimeError("planted: fails")
                    return extraction

                return corrupted(fail)().attach(model, layers=layers)

        return FailsWholeAndOddLayers

    layers = [str(i) for i in range(8)]
    model = nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in layers])
    alive: list[int] = []
    register("fails-whole", strategy(keeps_copies=False))
    rows = evaluate(model, layers=layers, strategies=["fails-whole"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    values = rows.set_index("layer")["status"]
    assert [values[layer] for layer in layers] == ["pass", "error"] * 4
    assert len(alive) == 1 + len(layers) and max(alive) <= 1, alive
    # the control: a strategy that keeps every copy it is given is seen keeping them
    copies.clear()
    alive.clear()
    register("fails-whole", strategy(keeps_copies=True))
    evaluate(model, layers=layers, strategies=["fails-whole"], checks=["values"], input_shape=pitfalls.INPUT_SHAPE)
    assert alive == list(range(1 + len(layers))), alive


def test_model_copies_are_charged_to_the_copy_phase_wherever_they_are_made():
    """Behaviour checks and the oracle copy the model too; those copies are the harness's work and
    count as ``copy``, not as the phase they are made in. Outside a timed run nothing is charged."""
    import re
    import time
    from pathlib import Path

    from conformance.core.timing import Timings, deep_copy

    class SlowToCopy:
        def __deepcopy__(self, memo: dict) -> "SlowToCopy":
            time.sleep(0.05)
            return SlowToCopy()

    timings, idle = Timings(), Timings()
    with timings.active(), timings.phase("behaviour.set_independence"):
        deep_copy(SlowToCopy())
    with idle.phase("forward"):
        deep_copy(SlowToCopy())
    assert timings.seconds["copy"] >= 0.05 and timings.seconds["behaviour.set_independence"] < 0.04
    assert "copy" not in idle.seconds
    # Every deep copy in the run's code goes through deep_copy (and copies.py, the copier it
    # calls); the deepcopy check copies the extractor under test (the strategy's behaviour, not
    # the harness's work).
    direct = {
        f"{path.name}: {line.strip()}"
        for path in Path("conformance").glob("*.py") if path.name not in ("timing.py", "copies.py", "bench.py")
        for line in path.read_text().splitlines()
        if re.search(r"copy\.deepcopy\((?!extractor\))|copy_model\(", line) and not line.lstrip().startswith(("#", '"""', "``"))
    }
    assert not direct, f"model copies not charged to the copy phase: {sorted(direct)}"


def test_the_truth_is_charged_to_the_oracle_phase_wherever_it_is_asked_for():
    """The oracle's captures and gradients are the harness's work, also when a behaviour check asks
    for them: ``oracle``, not the check's phase."""
    import time

    from conformance.truth.oracle import capture, gradients
    from conformance.core.timing import HARNESS_PHASES, Timings

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.05)
            return self.conv(x)

    timings, x = Timings(), torch.randn(1, 3, 4, 4)
    with timings.active(), timings.phase("behaviour.train_mode"):
        capture(Slow(), x, layers=["conv"])
        gradients(Slow(), x, weights={"conv": torch.ones(1, 3, 4, 4)})
    assert timings.seconds["oracle"] >= 0.1 and timings.seconds["behaviour.train_mode"] < 0.05
    assert "oracle" in HARNESS_PHASES


def test_weights_hashed_once_per_model_give_the_digests_that_hashing_gives():
    """A strategy's tensor bitwise equal to the model's takes the model's digest unhashed; one that
    differs in a bit (one ulp, the sign of a zero) is hashed and differs, as hashing it would."""
    import copy

    from conformance.judging.checks import tensor_digests

    model = pitfalls.Plain()
    with torch.no_grad():
        model.first.bias[0] = 0.0
    digests = tensor_digests(model)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.first.bias[0] = -0.0  # equal by value, not by bytes
        weight = changed.second.weight.view(-1)
        weight[0] = torch.nextafter(weight[0], torch.tensor(float("inf")))
    once = tensor_digests(changed, reference=model.state_dict(), reference_digests=digests)
    assert once == tensor_digests(changed)
    assert once["first.bias"] != digests["first.bias"] and once["second.weight"] != digests["second.weight"]
    assert once["first.weight"] == digests["first.weight"]


def test_quantized_weights_unpacked_anew_take_the_models_digests_unless_they_changed(monkeypatch):
    """A quantized convolution's state dict unpacks its weight anew each time: an unpacking equal in
    quantizer and integers takes the model's digest unhashed; one integer or one scale changed is
    hashed and differs, as hashing it would."""
    import copy

    from torch.ao.nn import quantized

    from conformance.judging import checks
    from conformance.judging.checks import tensor_digests

    torch.manual_seed(0)
    model = quantized.Conv2d(3, 4, 3)
    weight = torch.quantize_per_channel(torch.randn(4, 3, 3, 3), torch.rand(4, dtype=torch.double) + 0.1, torch.zeros(4, dtype=torch.long), 0, torch.qint8)
    model.set_weight_bias(weight, torch.randn(4))
    digests = tensor_digests(model)
    same, hashed = copy.deepcopy(model), []
    with monkeypatch.context() as patched:
        patched.setattr(checks, "tensor_digest", lambda tensor: hashed.append(tensor) or "")
        assert tensor_digests(same, reference=model.state_dict(), reference_digests=digests) == digests
    assert hashed == []
    integers, scales = weight.int_repr().clone(), weight.q_per_channel_scales().clone()
    integers.view(-1)[0] += 1
    scales[1] *= 1.0001
    for changed_weight in (torch._make_per_channel_quantized_tensor(integers, weight.q_per_channel_scales(), weight.q_per_channel_zero_points(), 0),
                           torch._make_per_channel_quantized_tensor(weight.int_repr(), scales, weight.q_per_channel_zero_points(), 0)):
        changed = copy.deepcopy(model)
        changed.set_weight_bias(changed_weight, model.bias())
        once = tensor_digests(changed, reference=model.state_dict(), reference_digests=digests)
        assert once == tensor_digests(changed)
        assert once["weight"] != digests["weight"] and once["bias"] == digests["bias"]


def test_a_module_holding_the_references_tensors_takes_their_digests_unread(monkeypatch):
    """The strategy's module that holds the attached copy's own tensors, under any names, is not read again."""
    from conformance.judging import checks

    model = pitfalls.Plain()
    digests = checks.tensor_digests(model)
    wrapper = torch.nn.ModuleDict({"wrapped": model})

    def read(*args):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(checks, "bitwise_equal", read)
    monkeypatch.setattr(checks, "tensor_digest", read)
    got = checks.tensor_digests(wrapper, reference=model.state_dict(), reference_digests=digests)
    assert got == {f"wrapped.{name}": digest for name, digest in digests.items()}


def test_model_untouched_names_the_weights_a_strategy_changed_in_place(register):
    register("corrupted-weights", corrupted(unchanged, on_attach=_tamper_weights))
    rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-weights"], checks=["model_untouched"], input_shape=pitfalls.INPUT_SHAPE)
    assert rows.iloc[0].detail.startswith("state dict differs (first.weight)"), rows.iloc[0].detail


def test_a_snapshot_holds_a_feature_equal_to_an_earlier_snapshots_once():
    from conformance.judging.checks import snapshot

    earlier = snapshot({"same": torch.ones(3), "changed": torch.ones(3), "nested": (torch.ones(2),)})
    again = snapshot({"same": torch.ones(3), "changed": torch.tensor([1.0, 1.0, -0.0 + 2.0]), "nested": (torch.ones(2),)}, reuse=earlier)
    assert again["same"] is earlier["same"]
    assert again["changed"] is not earlier["changed"] and again["changed"][2] == 2.0
    assert again["nested"][0] is not earlier["nested"][0]  # only top-level tensors are shared


def test_a_strategys_package_imported_on_first_use_is_charged_to_imports_not_the_harness(tmp_path, monkeypatch, register):
    """Importing a strategy's package is the strategy's cost: ``imports``, outside the harness's share."""
    import sys

    from conformance.running.runner import RunConfig, model_units
    from conformance.core.timing import HARNESS_PHASES, Timings
    from conformance.zoo.specs import ModelSpec

    (tmp_path / "slow_to_import.py").write_text(
        "import time\nfrom strategies.hooks import Hooks\ntime.sleep(0.3)\n\nclass SlowToImport(Hooks):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_to_import", raising=False)
    register("slow-to-import", "slow_to_import:SlowToImport")
    spec = ModelSpec("user", "plain", pitfalls.INPUT_SHAPE, pitfalls.Plain)
    config = RunConfig(models=[spec], layers=LAYERS, strategies=["slow-to-import"], checks=["values"])
    timings = Timings()
    rows = dict(model_units(spec, config.strategies, config, timings))
    assert rows["slow-to-import"][0].status == "pass"
    split = timings.split()
    assert split.get("imports", 0.0) >= 0.3 and split["rest"] < 0.3, split
    assert "imports" not in HARNESS_PHASES


def test_a_workers_time_in_no_phase_counts_as_rest_in_the_runs_split():
    """In a run in worker processes the parent's wall time is mostly waiting; the workers' own
    time outside every phase is the harness's (``rest``), and is not lost when their phases are added."""
    from conformance.core.timing import Timings

    worker = Timings()
    with worker.phase("forward"):
        pass
    seconds = worker.worker_seconds()
    assert "rest" in seconds and "total" not in seconds
    run = Timings()
    run.add_worker({"forward": 10.0, "rest": 2.0}, {"hooks": 12.0})
    split = run.split()
    assert split["forward"] == 10.0 and split["rest"] >= 2.0 and run.strategy_split() == {"hooks": 12.0}


class _Gain:
    """A plain helper object a module keeps, as torchvision's detectors keep a ``BoxCoder``."""

    def __init__(self, factor: float) -> None:
        self.factor = factor


class _SlottedGain:
    """The same helper with ``__slots__``: its state is not in a ``__dict__``."""

    __slots__ = ("factor",)

    def __init__(self, factor: float) -> None:
        self.factor = factor


class _ScaledByBuffer(nn.Module):
    """A model whose output reads a non-persistent buffer (no state dict, so no digest, holds it)
    and a helper object."""

    calls = 0

    def __init__(self, gain: type = _Gain) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.again = self.act  # one module under two names
        self.register_buffer("scale", torch.ones(1), persistent=False)
        self.gain = gain(1.0)

    def forward(self, x):
        type(self).calls += 1
        return self.again(self.second(self.act(self.first(x)))) * self.scale * self.gain.factor


def _scale_changed(model):
    model.scale.fill_(2.0)


def test_a_change_only_the_output_shows_is_caught_where_no_digest_sees_it(register):
    """The model-changes pass leaves out the forward pass only where every attribute is the
    model's; a non-persistent buffer changed in place is not in the state dict and must still
    be found, by the output (control: without the attribute comparison it passes)."""
    register("corrupted-scale", corrupted(unchanged, on_attach=_scale_changed))
    register("corrupted-none", corrupted(unchanged))
    rows = evaluate(_ScaledByBuffer(), layers=LAYERS, strategies=["corrupted-scale", "corrupted-none"], checks=["model_untouched"],
                    input_shape=pitfalls.INPUT_SHAPE)
    changed, untouched = (rows[rows.strategy == name].iloc[0] for name in ("corrupted-scale", "corrupted-none"))
    assert (changed.status, changed.diagnosis) == ("fail", "model_changed") and changed.detail.startswith("the output differs"), changed.to_dict()
    assert untouched.status == "pass", untouched.to_dict()


def _unshared(model):
    model.again = nn.ReLU()


def _swapped_class(model):
    model.act.__class__ = nn.Identity


def _attribute_changed(model):
    model.second.padding = (0, 0)


def _buffer_changed(model):
    model.scale += 1


def _helper_changed(model):
    model.gain.factor = 2.0


@pytest.mark.parametrize("gain, change, runs", [
    (_Gain, None, False), (_Gain, _unshared, True), (_Gain, _swapped_class, True), (_Gain, _attribute_changed, True),
    (_Gain, _buffer_changed, True), (_Gain, _helper_changed, True),
    (_SlottedGain, None, True),  # a helper whose state is not in its __dict__ is no proof: the copy is run
])
def test_the_model_changes_pass_runs_the_model_only_where_the_copy_may_differ(gain, change, runs):
    """An untouched copy is shown to hold the model's state attribute by attribute (a plain
    helper object by its ``__dict__``) and is not run; any change in the tree, a class, an
    attribute, a tensor outside the state dict or a helper's attribute runs it, as does a
    helper that cannot be compared."""
    from conformance.judging.checks import model_changes, tensor_digests
    from conformance.core.timing import deep_copy

    torch.manual_seed(0)
    model = _ScaledByBuffer(gain).eval()
    x = torch.randn(pitfalls.INPUT_SHAPE)
    with torch.no_grad():
        output = model(x)
    copy_ = deep_copy(model)
    if change is not None:
        change(copy_)
    _ScaledByBuffer.calls = 0
    changes = model_changes(pristine=model, model=copy_, truth=lambda: (x, output), digests=tensor_digests(copy_),
                            pristine_digests=tensor_digests(model))
    assert _ScaledByBuffer.calls == int(runs)
    assert (changes == []) == (change is None)


def test_a_forward_hook_left_for_every_module_is_caught_by_the_output(register):
    """A strategy that leaves a global module forward hook behind changes no attribute of the
    model, and every model's output: the model-changes pass runs the copy while one is registered
    (control: without that, the untouched-looking copy is not run and the row passes)."""
    from torch.nn.modules.module import register_module_forward_hook

    left = []

    def _global_hook_left_behind(model):
        left.append(register_module_forward_hook(lambda module, args, output: output * 2.0 if module is model else None))

    register("corrupted-global-hook", corrupted(unchanged, on_attach=_global_hook_left_behind))
    try:
        rows = evaluate(pitfalls.Plain(), layers=LAYERS, strategies=["corrupted-global-hook"], checks=["model_untouched"],
                        input_shape=pitfalls.INPUT_SHAPE)
    finally:
        for handle in left:
            handle.remove()
    row = rows.iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "model_changed") and row.detail.startswith("the output differs"), row.to_dict()


def test_a_zoo_model_whose_constructor_fails_is_rows_with_the_reason_not_the_end_of_the_run():
    """Counting a zoo model's parameters builds it (a DiNAT without natten raises there): that is a
    row per strategy naming the error; the control, a model that builds, is judged."""
    from conformance.core.timing import Timings
    from conformance.running.runner import RunConfig, model_units
    from conformance.zoo.specs import ModelSpec

    def needs_a_missing_package() -> nn.Module:
        raise ImportError("DinatModel requires the natten library")

    broken = ModelSpec("hf", "dinat", pitfalls.INPUT_SHAPE, needs_a_missing_package)
    working = ModelSpec("hf", "plain", pitfalls.INPUT_SHAPE, pitfalls.Plain)
    config = RunConfig(models=[broken, working], layers=LAYERS, strategies=["hooks"], checks=["values"])
    [(_, rows)] = list(model_units(broken, ["hooks"], config, Timings()))
    assert {(row.status, row.diagnosis) for row in rows} == {("error", "model_build_failed")}
    assert "natten" in rows[0].detail
    [(_, rows)] = list(model_units(working, ["hooks"], config, Timings()))
    assert {row.status for row in rows} == {"pass"}
