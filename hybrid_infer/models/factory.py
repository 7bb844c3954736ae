"""A Python factory for an nn.Module plus its state_dict file (or seeded random weights)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import RANDOM_WEIGHTS, CodeDefinedModel


@dataclass(frozen=True)
class FactorySpec(CodeDefinedModel):
    """factory: "package.module:function" (or a callable) returning an nn.Module.

    kwargs: keyword arguments for the factory, as a tuple of (name, value) pairs so the
    spec stays hashable. weights: a state_dict file (.pt/.pth/.safetensors, loaded
    without pickle unless allow_pickle) or "random" (seeded). Actors import the factory,
    so it must be importable there (installed package) or picklable (a callable).
    """

    factory: object
    weights: str = RANDOM_WEIGHTS
    kwargs: tuple = ()
    seed: int = 0
    allow_pickle: bool = False
    #: One name per output class, for top-k results (None: indices only).
    class_names: tuple | None = None

    def __post_init__(self):
        if self.weights is None:  # a factory has no pretrained default
            object.__setattr__(self, "weights", RANDOM_WEIGHTS)
        if isinstance(self.kwargs, dict):
            object.__setattr__(self, "kwargs", tuple(sorted(self.kwargs.items())))
        self._resolve()  # fail on the driver, not in every actor
        if self.weights != RANDOM_WEIGHTS and not os.path.isfile(self.weights):
            raise ModelError(f"weights file {self.weights!r} does not exist: pass the path of "
                             f"a saved state_dict or {RANDOM_WEIGHTS!r}")

    def _resolve(self):
        if callable(self.factory):
            return self.factory
        module_name, _, attr = str(self.factory).partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelError(f"cannot import model factory {self.factory!r} ({exc}): write it "
                             "as 'package.module:function'") from None

    @property
    def identity(self) -> str:
        factory = self.factory
        name = (f"{factory.__module__}:{factory.__qualname__}" if callable(factory)
                else str(factory))
        return f"factory:{name}:{dict(self.kwargs)}"

    def _construct(self):
        return self._resolve()(**dict(self.kwargs))
