"""``copy_model`` gives what ``copy.deepcopy`` gives: the same modules, attributes, tensors, sharing
and hooks, nothing shared with the original; classes with their own copying go to deepcopy."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import pytest
import torch
import torchvision
from torch import nn

import pitfalls
from conformance.core import copies
from conformance.running.runner import evaluate
from conformance.core.copies import SharedParameters, _copied_generically, copy_model
from conformance.core.timing import meta_copy
from conformance.judging.behaviour.copies import _scramble
from conformance.zoo.specs import build_model, resolve_model
from faults import corrupted, unchanged


def _hook(module: nn.Module, args: Any, output: Any) -> None:
    pass


class Tied(nn.Module):
    """Tied weights, one module under two names, a list holding a module, buffers viewing another
    (one with an attribute of its own, which ``Tensor.__deepcopy__`` copies), hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.embed.weight
        self.alias = self.embed
        self.kept = [self.head, "label", 3]
        self.register_buffer("base", torch.arange(8.0))
        self.register_buffer("view", self.base[2:6])
        self.register_buffer("tagged", self.base[4:8])
        self.tagged.note = "kept"
        self.head.register_forward_hook(_hook)
        self.embed.register_forward_pre_hook(lambda module, args: None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)) + self.view


def _differences(original: nn.Module, expected: nn.Module, got: nn.Module) -> list[str]:
    """How ``got`` differs from ``expected`` (``copy.deepcopy(original)``), and what it shares with ``original``."""
    found = []
    # by class name: a GraphModule's deepcopy makes a class of its own
    layout = lambda model: [(name, type(m).__qualname__, sorted(vars(m))) for name, m in model.named_modules(remove_duplicate=False)]  # noqa: E731
    if layout(got) != layout(expected):
        found.append("modules or their attributes differ")
    states = [model.state_dict(keep_vars=True) for model in (expected, got)]
    for key, tensor in states[0].items():
        other = states[1].get(key)
        if other is None or type(other) is not type(tensor) or other.requires_grad != tensor.requires_grad or not torch.equal(other, tensor):
            found.append(f"tensor {key} differs")
        elif (other.storage_offset(), other.stride(), other.untyped_storage().nbytes()) != (tensor.storage_offset(), tensor.stride(), tensor.untyped_storage().nbytes()):
            found.append(f"tensor {key} lies otherwise in its storage")
        elif other._version != tensor._version:
            found.append(f"tensor {key} has another version count")

    def sharing(state: dict[str, torch.Tensor], of: Callable[[torch.Tensor], int]) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for key, tensor in state.items():
            groups.setdefault(of(tensor), []).append(key)
        return sorted(groups.values())

    for what, of in (("tensors", id), ("storages", lambda t: t.untyped_storage().data_ptr())):
        if sharing(states[0], of) != sharing(states[1], of):
            found.append(f"shared {what} differ")
    originals = {t.untyped_storage().data_ptr() for t in original.state_dict().values()}
    if originals & {t.untyped_storage().data_ptr() for t in states[1].values()}:
        found.append("shares storage with the original")
    hooks = lambda model: [(name, list(m._forward_hooks.values()), len(m._forward_pre_hooks)) for name, m in model.named_modules()]  # noqa: E731
    if hooks(got) != hooks(expected):
        found.append("hooks differ")
    return found


def _models() -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    zoo = [(name, lambda name=name: build_model(spec=resolve_model(name), seed=0), (1, 3, 224, 224)) for name in
           ("torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:efficientnet_b0", "timm:vit_tiny_patch16_224")]
    traps = [(name, getattr(pitfalls, name), pitfalls.INPUT_SHAPE) for name in ("inplace_after_tap", "reused_module", "wrapped_mutation", "channels_last")]
    return [*zoo, *traps, ("tied", Tied, (1, 4)), ("graph_module", lambda: torch.fx.symbolic_trace(pitfalls.plain()), pitfalls.INPUT_SHAPE)]


@pytest.mark.parametrize("name, build, shape", _models(), ids=[name for name, *_ in _models()])
def test_a_model_copy_is_what_deepcopy_gives(name, build, shape):
    model = build().eval()
    got = copy_model(model)
    assert _differences(model, copy.deepcopy(model), got) == []
    assert _differences(got, copy.deepcopy(got), copy_model(got)) == []  # a copy of a copy: the state-dict check's
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(got(x), model(x))


def test_a_hook_handle_the_model_keeps_refers_to_the_copys_hook_dictionaries():
    """A handle refers to its module's hook dictionaries, empty ones among them, by weak reference;
    in the copy, to the copy's, as ``copy.deepcopy`` makes it, so that the copy can be copied again."""
    model = Tied()
    model.handle = model.embed.register_forward_hook(_hook)
    for copier in (copy.deepcopy, copy_model):
        twin = copier(model)
        assert twin.handle.hooks_dict_ref() is twin.embed._forward_hooks
        assert all(ref() is mine for ref, mine in zip(twin.handle.extra_dict_ref, (twin.embed._forward_hooks_with_kwargs, twin.embed._forward_hooks_always_called)))
        again = copy_model(twin)
        again.handle.remove()
        assert not again.embed._forward_hooks and twin.embed._forward_hooks


def _without_shared_memo(model: nn.Module, memo: dict | None = None) -> nn.Module:
    """A planted fault: each child copied with a memo of its own, so tied weights come apart."""
    twin = copy.copy(model)
    twin._modules = {name: copy.deepcopy(child) for name, child in model._modules.items()}
    twin._parameters = copy.deepcopy(model._parameters)
    twin._buffers = copy.deepcopy(model._buffers)
    return twin


def _sharing_tensors(model: nn.Module) -> nn.Module:
    """A planted fault: new modules holding the original's tensors."""
    twin = copy.copy(model)
    twin._modules = {name: _sharing_tensors(child) for name, child in model._modules.items()}
    return twin


def _cloning_buffers(model: nn.Module) -> nn.Module:
    """A planted fault: buffers cloned one by one, so a buffer viewing another gets a storage of its own."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        module._buffers = {name: buffer.clone() for name, buffer in module._buffers.items()}
    return twin


def _copied_with(model: nn.Module, **steps: Callable[[Any, dict], Any]) -> nn.Module:
    """``copy_model(model)`` with some of its steps (``_copy_buffer=...``) replaced: a planted fault."""
    kept = {name: getattr(copies, name) for name in steps}
    for name, step in steps.items():
        setattr(copies, name, step)
    try:
        return copy_model(model)
    finally:
        for name, step in kept.items():
            setattr(copies, name, step)


def _cloning_unregistered(model: nn.Module) -> nn.Module:
    """A planted fault: a buffer that fills its storage cloned without entering the storage in the
    memo, so the buffers viewing it later get a storage of their own."""
    def clone_buffer(tensor: torch.Tensor, memo: dict) -> torch.Tensor:
        if type(tensor) is torch.Tensor and not tensor.__dict__ and tensor.is_contiguous() and tensor.storage_offset() == 0:
            return memo.setdefault(id(tensor), tensor.clone())
        return copy.deepcopy(tensor, memo)

    return _copied_with(model, _copy_buffer=clone_buffer)


@pytest.mark.parametrize("copier, difference", [(_without_shared_memo, "shared tensors differ"), (_sharing_tensors, "shares storage with the original"),
                                                (_cloning_buffers, "shared storages differ"), (_cloning_buffers, "tensor view lies otherwise in its storage"),
                                                (_cloning_buffers, "tensor base has another version count"), (_cloning_unregistered, "shared storages differ")])
def test_the_comparison_catches_a_copy_that_unties_or_shares_tensors(copier, difference):
    model = Tied()
    assert difference in _differences(model, copy.deepcopy(model), copier(model))


def test_classes_with_their_own_copying_go_to_deepcopy():
    assert not _copied_generically(torch.fx.GraphModule) and not _copied_generically(torch.ao.nn.quantized.Conv2d)
    assert not _copied_generically(torch.Tensor) and _copied_generically(nn.Conv2d) and _copied_generically(nn.MultiheadAttention)
    quantized = torch.ao.nn.quantized.Conv2d(3, 3, 1)
    twin = copy_model(quantized)
    assert torch.equal(twin.weight().int_repr(), quantized.weight().int_repr()) and twin is not quantized


def _quantized_resnet18(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.quantization.resnet18(weights=None, quantize=True).eval()


def _quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.int_repr() if value.is_quantized else value for key, value in model.state_dict().items() if isinstance(value, torch.Tensor)}


def _scrambled_in_place(model: nn.Module) -> nn.Module:
    """The state-dict check's scramble as it was: other weights written into the state dict's tensors."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5)
    return model


@pytest.mark.parametrize("scramble, isolated", [(_scramble, True), (_scrambled_in_place, False)],
                         ids=["_scramble", "control: written in place"])
def test_scrambling_a_quantized_copy_leaves_the_original_as_it_was(scramble, isolated):
    """``copy.deepcopy`` of a quantized module packs its weights again with the original's bias
    tensor, which its state dict returns: the state-dict check's scramble of a copy loads new
    tensors. Control: writing into the copy's state dict changes the original."""
    model, x = _quantized_resnet18(0), torch.randn(1, 3, 64, 64)
    before, output = _quantized_state(model), model(x)
    twin = copy_model(model)
    assert torch.equal(twin(x), output)
    scramble(twin)
    assert not torch.equal(twin(x), output)
    unchanged = all(torch.equal(value, before[key]) for key, value in _quantized_state(model).items()) and torch.equal(model(x), output)
    assert unchanged is isolated


def _quantized_convs(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.ao.nn.quantized.modules.conv._ConvNd)}


def _sharing_quantized_convs(model: nn.Module) -> nn.Module:
    """A planted fault: the copy holds the original's quantized convolutions themselves."""
    def share(conv: nn.Module, memo: dict) -> nn.Module:
        memo[id(conv)] = conv
        return conv

    return _copied_with(model, _copy_packed_conv=share)


def _quantized_copy_differences(model: nn.Module, expected: nn.Module, got: nn.Module, x: torch.Tensor) -> list[str]:
    """How ``got`` differs from ``expected`` (``copy.deepcopy(model)``) and whether changing its
    weights (setting, loading, the state-dict check's scramble) reaches ``model``."""
    found = []
    before, output = _quantized_state(model), model(x)
    layout = lambda m: [(name, type(module), sorted(vars(module)), list(module._forward_hooks.values())) for name, module in m.named_modules()]  # noqa: E731
    if layout(got) != layout(expected):
        found.append("modules, attributes or hooks differ")
    if not (torch.equal(got(x), expected(x)) and torch.equal(got(x), output)):
        found.append("outputs differ")
    if any(not torch.equal(value, before[key]) for key, value in _quantized_state(got).items()):
        found.append("state differs")
    originals = _quantized_convs(model)
    if not all(conv._packed_params is originals[name]._packed_params for name, conv in _quantized_convs(got).items()):
        found.append("packed again")
    got.layer1[0].conv2.set_weight_bias(got.layer1[0].conv1.weight(), None)
    got.load_state_dict(_quantized_resnet18(1).state_dict())
    _scramble(got)
    if any(not torch.equal(value, before[key]) for key, value in _quantized_state(model).items()) or not torch.equal(model(x), output):
        found.append("changing the copy changed the original")
    return found


@pytest.mark.parametrize("copier, differences", [(copy.deepcopy, ["packed again"]), (copy_model, []),
                                                 (_sharing_quantized_convs, ["modules, attributes or hooks differ", "changing the copy changed the original"])],
                         ids=["deepcopy", "copy_model", "control: the convolutions shared"])
def test_a_quantized_copy_is_what_deepcopy_gives_without_packing_again(copier, differences):
    """A quantized convolution's copy holds the original's packed weights (its ``__deepcopy__``
    unpacks and packs them again) and is otherwise what ``copy.deepcopy`` gives: the same
    modules, attributes, hooks (which that ``__deepcopy__`` drops), state and output; setting,
    loading or scrambling its weights leaves the original as it was."""
    model, x = _quantized_resnet18(0), torch.randn(1, 3, 64, 64)
    model.layer1[0].conv1.register_forward_hook(_hook)
    model.layer1[0].relu.register_forward_hook(_hook)
    assert _quantized_copy_differences(model, copy.deepcopy(model), copier(model), x) == differences


@contextlib.contextmanager
def _unpacking_once_by_module(unpacked: dict) -> Any:
    """A planted fault: ``unpacking_once`` with the weights cached by the convolution, not by its packed object."""
    originals = {cls: vars(cls)["_weight_bias"] for cls in copies._subclasses(copies._PackedConv) if "_weight_bias" in vars(cls)}

    def by_module(conv: nn.Module, original: Callable) -> Any:
        if id(conv) not in unpacked:
            unpacked[id(conv)] = (conv, original(conv))
        return unpacked[id(conv)][1]

    for cls, original in originals.items():
        cls._weight_bias = lambda conv, original=original: by_module(conv, original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls._weight_bias = original


@pytest.mark.parametrize("faulty", [False, True], ids=["unpacking_once", "control: cached by module"])
def test_unpacking_once_gives_each_packed_objects_weights_unpacked_once(faulty, monkeypatch):
    """Inside ``unpacking_once``, the copies' state dicts equal the ones outside and each packed
    object is unpacked once; a convolution given new weights (a new packed object) gives those.
    Control: a cache by convolution gives the old weights."""
    model = _quantized_resnet18(0)
    twins = [copy_model(model) for _ in range(3)]
    unpacked: dict = {}
    once = _unpacking_once_by_module if faulty else copies.unpacking_once
    expected, calls = _quantized_state(model), []
    unpack = torch.ao.nn.quantized.Conv2d._weight_bias
    monkeypatch.setattr(torch.ao.nn.quantized.Conv2d, "_weight_bias", lambda conv: calls.append(conv) or unpack(conv))
    with once(unpacked):
        states = [_quantized_state(twin) for twin in (model, *twins)]
    assert torch.ao.nn.quantized.Conv2d._weight_bias is not unpack  # the patch is put back as found
    assert all(state.keys() == expected.keys() and all(torch.equal(state[key], expected[key]) for key in expected) for state in states)
    convs = len(_quantized_convs(model))
    assert len(calls) == (convs * 4 if faulty else convs)
    twins[0].layer1[0].conv1.set_weight_bias(twins[1].layer1[0].conv2.weight(), None)
    with once(unpacked):
        changed = _quantized_state(twins[0])["layer1.0.conv1.weight"]
    assert torch.equal(changed, expected["layer1.0.conv2.weight"]) is not faulty


# -- copies that share one set of parameters ----------------------------------------------


@pytest.mark.parametrize("name, build, shape", _models(), ids=[name for name, *_ in _models()])
def test_a_copy_holding_the_shared_parameters_is_what_deepcopy_gives_on_the_same_bytes(name, build, shape):
    model = build().eval()
    shared = SharedParameters(model)
    got, other = copy_model(model, shared.memo()), copy_model(model, shared.memo())
    assert _differences(model, copy.deepcopy(model), got) == []
    mine, theirs = list(got.parameters()), list(other.parameters())
    assert all(a is not b and a.data_ptr() == b.data_ptr() for a, b in zip(mine, theirs) if type(a) is nn.Parameter)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(got(x), model(x))
    assert shared.intact()


def test_the_shared_state_is_what_a_copy_holding_the_shared_parameters_holds():
    model = Tied()
    shared = SharedParameters(model)
    state = shared.state(model.state_dict())
    held = copy_model(model, shared.memo()).state_dict()
    assert list(state) == list(held)
    assert all(state[key].data_ptr() == held[key].data_ptr() for key in ("embed.weight", "head.weight", "embed.bias", "head.bias"))
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    # control: the model's own state dict lies elsewhere than the copy's parameters
    assert model.state_dict()["embed.weight"].data_ptr() != held["embed.weight"].data_ptr()


def _first_parameter(model: nn.Module) -> nn.Parameter:
    return next(model.parameters())


def _add_in_place(model: nn.Module) -> None:
    with torch.no_grad():
        _first_parameter(model).add_(1)


def _add_through_data(model: nn.Module) -> None:
    _first_parameter(model).data.add_(1)


def _add_through_numpy(model: nn.Module) -> None:
    _first_parameter(model).detach().numpy()[...] += 1


def _add_and_take_back(model: nn.Module) -> None:
    with torch.no_grad():
        _first_parameter(model).add_(1).sub_(1)


def _load_other_weights(model: nn.Module) -> None:
    model.load_state_dict(pitfalls.InplaceAfterTap().state_dict())


def _uses(model: nn.Module) -> None:
    """What strategies and checks do to a copy, none of it a write into a weight."""
    x = torch.randn(*pitfalls.INPUT_SHAPE)
    model.train()(x).sum().backward()  # batch statistics into the copy's own buffers, gradients into its own parameters
    model.eval()
    copy.deepcopy(model)(x)
    model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    _first_parameter(model).requires_grad_(False)


@pytest.mark.parametrize("act, intact", [(_uses, True), (_add_in_place, False), (_add_through_data, False), (_add_through_numpy, False),
                                         (_add_and_take_back, False), (_load_other_weights, False)],
                         ids=["uses", "in place", "through .data", "through NumPy", "in place and back", "load_state_dict"])
def test_shared_parameters_are_intact_until_something_writes_into_them(act, intact):
    model = pitfalls.InplaceAfterTap().eval()
    shared = SharedParameters(model)
    copy_ = copy_model(model, shared.memo())
    act(copy_)
    assert shared.intact() is intact
    assert _first_parameter(model).grad is None and torch.equal(model.bn.running_mean, torch.zeros(4))  # gradients and statistics stay the copy's


def test_shared_parameters_are_measured_again_once_lent_again():
    model = pitfalls.InplaceAfterTap().eval()
    shared = SharedParameters(model)
    first = copy_model(model, shared.memo())
    assert shared.intact()
    _add_in_place(first)  # a write through a copy lent before the last measure
    second = copy_model(model, shared.memo())
    assert not shared.intact()
    assert torch.equal(_first_parameter(second), _first_parameter(first))


def _doubles_its_weights_behind_autograd(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.data.mul_(2)


def _rows_after_a_strategy_that_writes_weights(register) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    register("writes-weights", corrupted(unchanged, on_attach=_doubles_its_weights_behind_autograd))
    torch.manual_seed(0)
    rows = evaluate(pitfalls.Plain(), layers=["first", "second"], strategies=["writes-weights", "hooks"],
                    checks=["values", "model_untouched", "train_mode", "gradients", "set_independence", "state_dict"], input_shape=pitfalls.INPUT_SHAPE)
    return {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


def test_a_unit_that_writes_into_the_shared_weights_is_taken_again_on_copies_of_their_own(register, monkeypatch):
    shared = _rows_after_a_strategy_that_writes_weights(register)
    assert shared[("writes-weights", "model_untouched", "*")][:2] == ("fail", "model_changed")
    assert all(row[:2] == ("pass", "") for key, row in shared.items() if key[0] == "hooks"), shared
    monkeypatch.setattr(SharedParameters, "memo", lambda self: {})  # every copy with parameters of its own, as before sharing
    assert _rows_after_a_strategy_that_writes_weights(register) == shared


def test_control_a_unit_that_wrote_into_the_shared_weights_and_was_not_taken_again_misleads_the_next(register, monkeypatch):
    monkeypatch.setattr(SharedParameters, "intact", lambda self: True)
    got = _rows_after_a_strategy_that_writes_weights(register)
    assert got[("hooks", "values", "first")][:2] == ("fail", "unexplained"), got[("hooks", "values", "first")]


class HalvesItsWeights(nn.Module):
    """A model whose every call in train mode writes into its own weights behind autograd's back
    (through ``.data``): its eval-mode passes are deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.first.weight.data.mul_(0.5)
        return self.second(self.first(x).relu())


def _rows_of_a_model_that_writes_its_weights() -> dict[tuple[str, str, str], tuple[str, str, str]]:
    torch.manual_seed(0)
    rows = evaluate(HalvesItsWeights(), layers=["first", "second"], strategies=["hooks", "fx"],
                    checks=["values", "repeatable", "stale_results", "model_output", "train_mode", "gradients", "input_size"], input_shape=(2, 8))
    return {(r.strategy, r.check, r.layer): (r.status, r.diagnosis, r.detail) for r in rows.itertuples()}


def test_a_model_that_writes_its_weights_is_taken_again_with_the_oracles_copies_on_their_own(monkeypatch):
    """The oracle's copies hold one set of parameters of their own; a model whose passes write into
    it is taken again with each oracle copy on parameters of its own, and gets those rows. Control:
    not taken again, the eval-mode truths rest on weights a train-mode pass wrote, and blame hooks."""
    from conformance.running import runner

    shared = _rows_of_a_model_that_writes_its_weights()
    assert shared[("hooks", "train_mode", "first")][:2] == ("pass", "") and shared[("hooks", "gradients", "first")][:2] == ("pass", "")
    with monkeypatch.context() as patched:
        patched.setattr(runner, "oracle_sharing", lambda parameters: contextlib.nullcontext())  # every oracle copy its own, as before sharing
        assert _rows_of_a_model_that_writes_its_weights() == shared
    monkeypatch.setattr(runner, "_written", lambda parameters, timings: False)
    misled = _rows_of_a_model_that_writes_its_weights()
    assert misled[("hooks", "train_mode", "first")][:2] == ("fail", "unexplained") and misled[("hooks", "gradients", "first")][:2] == ("fail", "unexplained")


@pytest.mark.parametrize("name, build, shape", _models(), ids=[name for name, *_ in _models()])
def test_a_meta_copy_is_a_deep_copy_moved_to_meta(name, build, shape):
    """``meta_copy`` skips copying the bytes ``.to("meta")`` would throw away, and keeps tied
    parameters tied."""
    model = build().eval()
    before = {key: (tensor, tensor.device) for key, tensor in model.state_dict(keep_vars=True).items()}
    expected, got = copy.deepcopy(model).to("meta"), meta_copy(model)
    layout = lambda m: [(name, type(module).__qualname__, sorted(vars(module)), module.training) for name, module in m.named_modules(remove_duplicate=False)]  # noqa: E731
    assert layout(got) == layout(expected)
    described = lambda m: {key: (type(t), t.requires_grad, t.shape, t.stride(), t.dtype, t.device.type)  # noqa: E731
                           for key, t in m.state_dict(keep_vars=True).items()}
    assert described(got) == described(expected)
    tied = lambda m: sorted(sorted(k for k, t in m.state_dict(keep_vars=True).items() if id(t) == i)  # noqa: E731
                            for i in {id(t) for t in m.state_dict(keep_vars=True).values()})
    assert tied(got) == tied(model)  # where ``.to("meta")`` gives each module a parameter of its own, unties them
    assert {key: (tensor, tensor.device) for key, tensor in model.state_dict(keep_vars=True).items()} == before  # the model keeps its own
    with torch.no_grad():
        assert got(torch.empty(*shape, device="meta")).shape == expected(torch.empty(*shape, device="meta")).shape
