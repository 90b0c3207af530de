"""A thing made the first time it is asked for, once, whichever thread asks: the engine's model runners
import torch, which a server that never upscales or restores a face need not pay for."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class MadeOnFirstUse(Generic[T]):
    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._made: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made

    @property
    def made(self) -> T | None:
        """The thing if it was made already, else None (never makes it)."""
        return self._made
