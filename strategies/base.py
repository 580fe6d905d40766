"""The one interface every extraction strategy implements.

A :class:`Strategy` attaches to a model for a list of layers and returns an
:class:`Extractor`; calling the extractor on an input gives an :class:`Extraction`.
Strategies make no claims about what they support beyond raising :class:`Unsupported`
when their API cannot express a request: everything else is measured by the checks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Extraction", "Extractor", "Strategy", "Unsupported", "clone_tree"]


class Unsupported(Exception):
    """The strategy's API cannot express this request (the message says why).

    ``layers`` names the requested layers at fault when only some are; the others can
    then be extracted on their own. ``None`` means the request fails as a whole.
    """

    def __init__(self, reason: str, *, layers: Sequence[str] | None = None) -> None:
        super().__init__(reason)
        self.layers = list(layers) if layers is not None else None


@dataclass
class Extraction:
    """What one call of an extractor returned.

    ``features`` is the strategy's own container, exactly as it hands it to users (it may
    be mutated by later calls; that is a property the checks observe). ``output`` is the
    model's output where the strategy returns it, else ``None``.
    """

    features: Mapping[str, Any]
    output: Any = None


class Extractor(ABC):
    """A strategy attached to one model for one list of layers."""

    #: The module the strategy executes; its weights are compared with the model's.
    module: nn.Module

    def __call__(self, x: torch.Tensor) -> Extraction:
        """Run the input through and return the features."""
        return self.extract_with(self.module, x)

    @abstractmethod
    def extract_with(self, module: nn.Module | torch.jit.ScriptModule, x: torch.Tensor) -> Extraction:
        """Run ``x`` through ``module`` and collect the features the way this strategy does.

        ``module`` is :attr:`module` or a transformed stand-in for it (scripted, compiled,
        exported, deep-copied); whether the strategy still works then is what checks measure.
        """

    def close(self) -> None:
        """Undo whatever attaching did to the model, as the strategy's users would."""


class Strategy(ABC):
    """A way of getting intermediate features out of a model."""

    name: str = ""

    @abstractmethod
    def attach(self, model: nn.Module, *, layers: Sequence[str]) -> Extractor:
        """Return an extractor for ``layers`` (module paths) of ``model``.

        Raise :class:`Unsupported` when the strategy cannot express the request.
        """


def clone_tree(value: Any) -> Any:
    """Clone every tensor in a (possibly nested) structure; leave other values as they are."""
    return torch.utils._pytree.tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, value
    )
