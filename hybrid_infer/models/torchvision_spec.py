"""A torchvision architecture by name, with random (seeded) weights or a state_dict file."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import RANDOM_WEIGHTS, CodeDefinedModel

#: torchvision classification models the engine knows by name.
SUPPORTED_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101",
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
)



@dataclass(frozen=True)
class ModelSpec(CodeDefinedModel):
    """A torchvision architecture plus where its weights come from.

    weights: "random" (initialised from `seed`, for tests and demos: no hub is reachable)
    or the path of a local checkpoint holding a state_dict (.pt/.pth saved with
    torch.save, or .safetensors). Checkpoints are loaded with ``weights_only=True``;
    ``allow_pickle=True`` lifts that for trusted files only (it can run arbitrary code).
    """

    name: str
    weights: str = RANDOM_WEIGHTS
    seed: int = 0
    num_classes: int = 1000
    allow_pickle: bool = False
    #: One name per output class, for top-k results (None: indices only).
    class_names: tuple | None = None

    def __post_init__(self):
        if self.name not in SUPPORTED_MODELS:
            raise ModelError(
                f"unknown model {self.name!r}: use one of {', '.join(SUPPORTED_MODELS)}"
            )
        if self.weights != RANDOM_WEIGHTS and not os.path.isfile(self.weights):
            raise ModelError(
                f"weights file {self.weights!r} does not exist: pass the path of a saved "
                f"state_dict (.pt, .pth or .safetensors) or {RANDOM_WEIGHTS!r}"
            )

    @property
    def identity(self) -> str:
        """What the architecture is, independent of the weight values."""
        return f"torchvision:{self.name}:{self.num_classes}"

    def _construct(self):
        import torchvision

        return getattr(torchvision.models, self.name)(weights=None,
                                                      num_classes=self.num_classes)

