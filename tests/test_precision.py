"""``conformance precision``: the error each condition makes in the true features, against the
checks' tolerance; planted models that depend on the batch or draw noise on every call are caught."""

import itertools
import json

import pandas as pd
import torch
from torch import nn

from conformance.evidence.precision import CONDITIONS, measure_precision, precision_summary
from conformance.zoo.specs import ModelSpec


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.conv(x).relu())


class MixesTheBatch(Plain):
    """Planted: each sample's features depend on the others in its batch."""

    def forward(self, x):
        features = self.conv(x)
        return self.head(features - features.mean(0, keepdim=True))


class CountsItsCalls(Plain):
    """Planted: each call adds how many calls came before it, counted outside the model, where
    neither a deep copy nor the oracle's fixed random state reaches (as a kernel's run-to-run noise)."""

    calls = itertools.count()

    def forward(self, x):
        return self.head(self.conv(x) + 1e-3 * next(CountsItsCalls.calls))


def _rows(model_class: type, shape=(2, 3, 8, 8)):
    spec = ModelSpec(source="user", name=model_class.__name__, input_shape=shape, factory=model_class)
    frame = measure_precision(specs=[spec], device="cpu", seed=0, layers=["conv", "head"])
    return frame.set_index(["condition", "layer"])


def test_a_plain_model_repeats_bitwise_and_every_condition_is_measured_or_says_why_not():
    rows = _rows(Plain)
    for condition in ("repeat", "nondeterministic", "tf32"):
        assert rows.loc[(condition, "head"), "bitwise"], condition  # the CPU has no TF32 and no autotuner
    for condition in ("batch_split", "channels_last"):
        assert rows.loc[(condition, "head"), "status"] == "ok"
        assert rows.loc[(condition, "head"), "tolerance_ratio"] <= 1, condition
    assert rows.loc[("cpu", "*"), "status"] == "skipped" and "on the CPU" in rows.loc[("cpu", "*"), "detail"]
    summary = precision_summary(rows.reset_index()).set_index("condition")
    assert summary.loc["repeat", "features"] == 2 and summary.loc["repeat", "bitwise"] == 2
    assert summary.loc["cpu", "not_measured"] == "skipped 1"


def test_negative_control_a_model_that_mixes_the_batch_is_far_outside_the_tolerance_on_a_batch_split():
    rows = _rows(MixesTheBatch)
    assert rows.loc[("batch_split", "conv"), "bitwise"] or rows.loc[("batch_split", "conv"), "tolerance_ratio"] <= 1  # before the mixing
    assert rows.loc[("batch_split", "head"), "tolerance_ratio"] > 100
    assert rows.loc[("repeat", "head"), "bitwise"]


def test_negative_control_a_model_that_changes_from_call_to_call_does_not_repeat():
    rows = _rows(CountsItsCalls)
    assert not rows.loc[("repeat", "head"), "bitwise"] and rows.loc[("repeat", "head"), "tolerance_ratio"] > 1
    assert rows.loc[("repeat", "conv"), "bitwise"]


def test_a_model_on_another_input_than_four_dimensions_skips_channels_last_with_the_reason():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.proj(x))

    spec = ModelSpec(source="user", name="tokens", input_shape=(2, 5, 6), factory=Tokens)
    rows = measure_precision(specs=[spec], device="cpu", seed=0, layers=["proj", "head"]).set_index(["condition", "layer"])
    assert rows.loc[("channels_last", "*"), "status"] == "skipped" and "3-D" in rows.loc[("channels_last", "*"), "detail"]
    assert rows.loc[("batch_split", "head"), "tolerance_ratio"] <= 1


def test_the_command_writes_the_rows_and_a_summary_and_bad_input_is_a_clear_error(tmp_path):
    from test_cli import PITFALLS, conformance

    result = conformance("precision", "--model", f"{PITFALLS}:plain", "--out", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr[-2000:]
    frame = pd.read_csv(tmp_path / "p" / "precision.csv")
    assert set(frame["condition"]) == set(CONDITIONS) and "repeat" in result.stdout
    assert json.loads((tmp_path / "p" / "precision.json").read_text())["summary"]
    bad = conformance("precision", "--model", "torchvision:resnet181", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown model 'torchvision:resnet181'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
