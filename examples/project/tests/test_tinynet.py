"""The project's own tests, beside the conformance items the plugin collects from pyproject.toml."""

import torch

from conformance import assert_conforms
from tinynet import build


def test_output_shape():
    assert build()(torch.randn(2, 3, 16, 16)).shape == (2, 4, 16, 16)


def test_the_strategy_we_ship_conforms_in_train_mode_too():
    assert_conforms(build(), layers=["bn", "head"], strategy="hooks+clone", checks=["values", "train_mode"], input_shape=(2, 3, 16, 16))
