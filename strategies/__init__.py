"""Feature-extraction strategies behind one interface, and their registry.

Each strategy lives in its own module (``strategies/hooks.py``, ``strategies/fx.py``, ...)
and is named in ``strategies/_registry.py``. Adding one means one file plus one line there.
"""

from ._registry import (
    CORE_STRATEGIES,
    StrategyUnavailable,
    available_strategies,
    get_strategy,
    list_strategies,
    register_strategy,
    registry,
)
from .base import Extraction, Extractor, Strategy, Tap, Unsupported

__all__ = [
    "CORE_STRATEGIES",
    "Extraction",
    "Extractor",
    "Strategy",
    "StrategyUnavailable",
    "Tap",
    "Unsupported",
    "available_strategies",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "registry",
]
