"""The strategy registry: read-only view, fnmatch listing, unavailable packages with a hint."""

import pytest

import strategies
from strategies import StrategyUnavailable, get_strategy, list_strategies, register_strategy, registry
from strategies._registry import _known


def test_the_six_strategies_and_their_variants_are_registered():
    names = list_strategies()
    assert names[:2] == ["stash", "stash+clone"]
    assert set(strategies.CORE_STRATEGIES) <= set(names)
    assert list_strategies(include="*+clone") == ["stash+clone", "hooks+clone", "torchextractor+clone"]
    assert "fx" not in list_strategies(exclude=["fx", "t*"])


def test_public_view_is_read_only():
    with pytest.raises(TypeError):
        registry["x"] = object


def test_get_strategy_names_the_instance():
    assert get_strategy("fx").name == "fx"
    with pytest.raises(KeyError):
        get_strategy("nope")


def test_missing_package_is_unavailable_with_install_hint():
    register_strategy("ghost", "package_that_is_not_installed.adapter:Ghost", requirement="ghost-extractor")
    try:
        with pytest.raises(StrategyUnavailable, match="pip install ghost-extractor"):
            get_strategy("ghost")
        assert "pip install ghost-extractor" in strategies.available_strategies()["ghost"]
    finally:
        _known.pop("ghost")


def test_registering_twice_needs_clobber():
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("hooks", "strategies.hooks:Hooks")


def test_unavailable_strategy_is_a_skipped_row_not_a_crash():
    import pitfalls
    from conformance.running.runner import evaluate

    register_strategy("ghost", "package_that_is_not_installed.adapter:Ghost", requirement="ghost-extractor")
    try:
        rows = evaluate(pitfalls.Plain(), layers=["first"], strategies=["ghost"], input_shape=pitfalls.INPUT_SHAPE)
    finally:
        _known.pop("ghost")
    assert set(zip(rows.status, rows.diagnosis)) == {("skipped", "unavailable")}


@pytest.mark.parametrize("name, package", [("torchlens", "torchlens"), ("captum", "captum"), ("nnsight", "nnsight")])
def test_an_optional_strategy_without_its_package_names_its_extra(monkeypatch, name, package):
    import sys

    from strategies import _registry

    monkeypatch.delitem(_registry._registry, name, raising=False)
    for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")] or [package]:
        monkeypatch.setitem(sys.modules, module, None)  # what import finds when the package is not installed
    for module in [m for m in sys.modules if m.startswith("strategies.") and package in m]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(StrategyUnavailable, match=rf"pip install 'feature-conformance\[{name}\]'"):
        get_strategy(name)
