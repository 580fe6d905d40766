"""timm builds reused are what fresh ``timm.create_model`` calls build: the same modules, hooks,
state and outputs once the model's tensors are loaded; tensors no load replaces are reused only
once a second build gave them bitwise the same."""

from __future__ import annotations

import copy
import threading

import pytest
import timm
import torch
from torch import nn

from conformance.core.compare import bitwise_equal
from conformance.core.timmbuilds import reusing_timm_builds, unloaded_tensors
from strategies.timm_features import match_state_dict, TimmFeaturesOnly
from strategies.base import Tap


def _loaded(features: nn.Module, model: nn.Module) -> nn.Module:
    features.load_state_dict(match_state_dict(features, model))
    return features.eval()


def _same_module(one: nn.Module, other: nn.Module) -> None:
    """The same module tree, hooks, state and tensors outside the state, bitwise."""
    assert [(name, type(module), module.training) for name, module in one.named_modules()] == [
        (name, type(module), module.training) for name, module in other.named_modules()]
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in one.modules()] == [
        (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in other.modules()]
    assert getattr(one, "feature_info", None) is not None and list(one.feature_info) == list(other.feature_info)
    for mine, theirs in ((one.state_dict(), other.state_dict()), (unloaded_tensors(one), unloaded_tensors(other))):
        assert mine.keys() == theirs.keys()
        assert all(mine[key].dtype == theirs[key].dtype and bitwise_equal(mine[key], theirs[key]) for key in mine)


def _same_outputs(one: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        outputs = one(x), other(x)
    assert len(outputs[0]) == len(outputs[1]) and all(bitwise_equal(a, b) for a, b in zip(*outputs))


@pytest.mark.parametrize("arch, out_indices", [
    ("resnet18", (0, 1, 2, 3, 4)), ("resnet18", (2,)), ("efficientnet_b0", (1, 3)), ("convnext_atto", (0, 1, 2, 3)),
    ("vit_tiny_patch16_224", (3, 11)), ("levit_128s", (0, 1, 2)),
])
def test_a_reused_build_is_a_fresh_one(arch: str, out_indices: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    size = 224 if "vit" in arch else 96
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    fresh = _loaded(timm.create_model(arch, pretrained=False, features_only=True, out_indices=out_indices), model)
    with reusing_timm_builds() as cache:
        reused = [_loaded(timm.create_model(arch, pretrained=False, features_only=True, out_indices=out_indices), model) for _ in range(3)]
    for features in reused:  # before any runs: a pass fills levit's cache of attention biases
        _same_module(features, fresh)
    for features in reused:
        _same_outputs(features, fresh, x)
    proven = bool(unloaded_tensors(fresh))  # levit's attention bias indices: a second build first proves them the same
    assert (cache.misses, cache.hits) == ((2, 1) if proven else (1, 2))
    assert len({id(p) for features in reused for p in features.parameters()}) == 3 * len(list(fresh.parameters()))


def test_the_strategy_gets_the_values_it_gets_from_fresh_builds() -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layers = [Tap("blocks.1"), Tap("blocks.4")]
    fresh = TimmFeaturesOnly().attach(model, layers=layers)(x).features
    with reusing_timm_builds() as cache:
        for _ in range(2):
            reused = TimmFeaturesOnly().attach(model, layers=layers)(x).features
            assert reused.keys() == fresh.keys() and all(bitwise_equal(reused[key], fresh[key]) for key in fresh)
    assert cache.hits == 1


def test_tensors_no_load_replaces_are_built_afresh_where_builds_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    build = timm.models.resnet.ResNet.__init__

    def with_random_index(self: nn.Module, *args: object, **kwargs: object) -> None:
        """A non-persistent buffer drawn at random as the model is built: no two builds share it."""
        build(self, *args, **kwargs)
        self.register_buffer("index", torch.randperm(64), persistent=False)

    monkeypatch.setattr(timm.models.resnet.ResNet, "__init__", with_random_index)
    torch.manual_seed(0)
    with reusing_timm_builds() as cache:
        builds = [timm.create_model("resnet10t") for _ in range(4)]
    assert cache.hits == 0 and len(cache.fresh) == 1 and not cache.builds
    indices = [model.index for model in builds]
    assert all(not torch.equal(indices[0], other) for other in indices[1:])  # each as a fresh build draws it
    # The control: reusing the first build gives every later call the first one's index.
    with reusing_timm_builds() as cache:
        timm.create_model("resnet10t")
        cache.unproven.clear()
        assert torch.equal(timm.create_model("resnet10t").index, next(iter(cache.builds.values())).index)


def test_timms_hook_based_wrapper_is_reused_with_its_hooks() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    arguments = dict(pretrained=False, features_only=True, feature_cls="hook", out_indices=(1, 3))
    fresh = _loaded(timm.create_model("resnet18", **arguments), model)
    with reusing_timm_builds() as cache:
        reused = [_loaded(timm.create_model("resnet18", **arguments), model) for _ in range(3)]
    assert cache.hits == 2
    for features in reused:
        _same_module(features, fresh)
        _same_outputs(features, fresh, x)


def test_a_build_that_cannot_be_copied_is_built_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    build = timm.models.resnet.ResNet.__init__

    def with_a_lock(self: nn.Module, *args: object, **kwargs: object) -> None:
        build(self, *args, **kwargs)
        self.lock = threading.Lock()  # copy.deepcopy cannot copy a lock

    monkeypatch.setattr(timm.models.resnet.ResNet, "__init__", with_a_lock)
    with pytest.raises(TypeError):
        copy.deepcopy(timm.create_model("resnet10t"))
    with reusing_timm_builds() as cache:
        builds = [timm.create_model("resnet10t") for _ in range(3)]
    assert cache.hits == 0 and len(cache.fresh) == 1 and not cache.builds
    assert len({id(model.lock) for model in builds}) == 3


def test_what_the_build_depends_on_is_in_the_key() -> None:
    with reusing_timm_builds() as cache:
        timm.create_model("resnet18", features_only=True, out_indices=(1,))
        timm.create_model("resnet18", features_only=True, out_indices=(2,))
        timm.create_model("resnet18", features_only=True, out_indices=(1,), output_stride=16)
        with timm.layers.set_layer_config(exportable=True):
            timm.create_model("resnet18", features_only=True, out_indices=(1,))
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            as_float64 = timm.create_model("resnet18", features_only=True, out_indices=(1,))
        finally:
            torch.set_default_dtype(default)
        assert as_float64.conv1.weight.dtype == torch.float64
        timm.create_model("resnet18", features_only=True, out_indices=(1,), pretrained_cfg_overlay={"num_classes": 10})
        assert (cache.misses, cache.hits) == (5, 0)
        timm.create_model("resnet18", features_only=True, out_indices=(2,))
        assert cache.hits == 1


def test_create_model_is_timms_own_outside() -> None:
    original = timm.create_model
    with reusing_timm_builds():
        assert timm.create_model is not original
    assert timm.create_model is original
