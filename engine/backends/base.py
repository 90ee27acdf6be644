"""The Runner interface every backend implements (Polygraphy's activate / infer / deactivate)."""
from __future__ import annotations

import abc


class RunnerError(RuntimeError):
    """A runner that cannot be built or used as asked."""


class Runner(abc.ABC):
    """Activate once, infer many batches, deactivate. Also a context manager."""

    name: str = "runner"
    device: str = "cpu"

    def __init__(self):
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, batch):
        """(N, 3, S, S) float32 array -> (N, F) float32 features (NumPy; CuPy on GPU runners)."""
        if not self.is_active:
            raise RunnerError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self._infer(batch)

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch): ...

    def _deactivate(self) -> None:
        pass
