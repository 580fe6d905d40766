"""``post_processed``: a strategy that runs its own forward and normalises what it returns (a
transformers backbone's ``hidden_states_norms``), named by the norm that ran in its pass and by
what that norm ran on; each variant planted, with controls that must not be named so."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch
from torch import nn

from conformance.running.runner import evaluate
from strategies import Extraction, Extractor, Strategy

STAGES = ["stem", "encoder.stages.0", "encoder.stages.1"]


class Residual(nn.Module):
    """``x + scale * conv(x)``: with a tiny scale (ConvNeXt's layer scale at init, 1e-6) it barely
    changes its input."""

    def __init__(self, *, scale: float) -> None:
        super().__init__()
        self.conv, self.scale = nn.Conv2d(4, 4, 3, padding=1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.conv(x)


class TwoStages(nn.Module):
    """A stem, two stages and a final norm; the forward doubles the stem's output before the
    encoder (code of its own between two modules, as Hiera's ``unroll``)."""

    def __init__(self, *, first_stage_scale: float = 1.0, doubling: float = 2.0) -> None:
        super().__init__()
        self.doubling = doubling
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.encoder = nn.Module()
        self.encoder.stages = nn.ModuleList([Residual(scale=first_stage_scale), nn.Conv2d(4, 4, 3, padding=1)])
        self.norm = nn.GroupNorm(1, 4)
        with torch.no_grad():
            self.norm.weight.copy_(1 + 0.2 * torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.stem(x) * self.doubling
        for stage in self.encoder.stages:
            hidden = stage(hidden)
        return self.norm(hidden)


class Backbone(nn.Module):
    """A backbone around the model, as transformers' are: the model's modules, norms of its own per
    stage (at init: weight 1, bias 0), and a forward of its own."""

    def __init__(self, model: TwoStages, *, doubles: bool, shift: float, stage_for: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        self.stage_norms = nn.ModuleDict({name.replace(".", "_"): nn.GroupNorm(1, 4) for name in STAGES})
        self.doubles, self.shift, self.stage_for = doubles, shift, stage_for

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"stem": self.model.stem(x)}
        hidden = outputs["stem"] * self.model.doubling if self.doubles else outputs["stem"]
        for index, stage in enumerate(self.model.encoder.stages):
            hidden = outputs[f"encoder.stages.{index}"] = stage(hidden)
        return {name: self.stage_norms[name.replace(".", "_")](outputs[self.stage_for.get(name, name)]) + self.shift for name in STAGES}


def planted(*, doubles: bool = True, shift: float = 0.0, stage_for: dict[str, str] | None = None) -> type[Strategy]:
    class _Extractor(Extractor):
        def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
            self.module, self.names = module, names

        def extract_with(self, module: nn.Module, x: Any) -> Extraction:
            features = module(x)
            return Extraction({name: features[name] for name in self.names})

    class Planted(Strategy):
        def attach(self, model, *, layers, tracer_kwargs=None):
            return _Extractor(Backbone(model, doubles=doubles, shift=shift, stage_for=stage_for or {}), [str(layer) for layer in layers])

    return Planted


def rows(register, model: nn.Module, **planting: Any) -> dict[str, tuple[str, str, str]]:
    register("planted", planted(**planting))
    frame = evaluate(model, layers=STAGES, strategies=["planted"], checks=["values"], input_shape=(2, 3, 8, 8)).fillna({"diagnosis": "", "detail": ""})
    return {row.layer: (row.status, row.diagnosis, row.detail) for row in frame.itertuples()}


def test_stages_normalised_by_the_strategys_own_norms_are_named_by_the_norm_that_ran(register):
    got = rows(register, TwoStages())
    for layer in STAGES:
        status, diagnosis, detail = got[layer]
        assert (status, diagnosis) == ("fail", "post_processed"), got[layer]
        assert f"the true value through the strategy's own GroupNorm 'stage_norms.{layer.replace('.', '_')}', as it is" in detail, detail


def test_the_control_a_normalised_stage_changed_afterwards_is_unexplained(register):
    assert {status_diagnosis[:2] for status_diagnosis in rows(register, TwoStages(), shift=0.5).values()} == {("fail", "unexplained")}


def test_norms_computing_the_same_function_on_nearly_the_same_values_are_told_apart_by_the_one_that_ran(register):
    """The first stage barely changes its input (as ConvNeXt's at init: layer scale 1e-6), and the
    stem's and the stage's norms are both at init: the stage's value is named by its own norm."""
    got = rows(register, TwoStages(first_stage_scale=1e-6, doubling=1.0))
    assert got["encoder.stages.0"][1] == "post_processed" and "'stage_norms.encoder_stages_0'" in got["encoder.stages.0"][2], got


def test_a_norm_run_on_another_modules_output_is_post_processed_and_wrong_layer(register):
    got = rows(register, TwoStages(), stage_for={"encoder.stages.1": "encoder.stages.0"})
    status, diagnosis, detail = got["encoder.stages.1"]
    assert (status, diagnosis) == ("fail", "post_processed+wrong_layer") and "the output of module 'encoder.stages.0'" in detail, got


def test_a_forward_of_its_own_that_feeds_a_module_another_input_is_named_with_that_module(register):
    """The backbone leaves out the model's doubling between stem and encoder (as Hiera's skips
    ``unroll``): its stages are the model's stages run on another input, then normalised."""
    got = rows(register, TwoStages(), doubles=False)
    assert got["stem"][1] == "post_processed", got  # the stem runs before the missing code: its value is the truth, normalised
    status, diagnosis, detail = got["encoder.stages.1"]
    assert (status, diagnosis) == ("fail", "post_processed+own_forward"), got
    # where the two forwards part: the first stage is given the stem's output, undoubled
    assert "when the model's 'encoder.stages.0' is given what the strategy's own forward gives it (the output of module 'stem'" in detail, detail


def test_the_control_the_models_own_norm_bound_in_place_of_a_stage_is_wrong_layer_not_post_processed(register):
    """A strategy returning the model's final norm's output for the last stage (FX binding the
    next module) is that module's output: no norm of the strategy's own is involved."""

    class NextModule(Strategy):
        def attach(self, model, *, layers, tracer_kwargs=None):
            class _Extractor(Extractor):
                module = model

                def extract_with(self, module, x):
                    taken = {}
                    handle = module.norm.register_forward_hook(lambda m, a, out: taken.__setitem__("encoder.stages.1", out.clone()))
                    try:
                        output = module(x)
                    finally:
                        handle.remove()
                    return Extraction(taken, output)

            return _Extractor()

    register("next-module", NextModule)
    frame = evaluate(TwoStages(), layers=["encoder.stages.1"], strategies=["next-module"], checks=["values"], input_shape=(2, 3, 8, 8))
    row = frame.iloc[0]
    assert (row.status, row.diagnosis) == ("fail", "wrong_layer") and "'norm'" in row.detail, row.to_dict()
