"""The one exception type users see: a message naming the bad value, and a hint."""

from __future__ import annotations

__all__ = ["ConformanceError"]


class ConformanceError(Exception):
    """Bad input from the user. The CLI prints it without a traceback and exits 2."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}\nhint: {self.hint}" if self.hint else message
