"""Model names and checkpoint files, as pure code: torch and torchvision import together,
pickled checkpoints are refused unless allowed, an unknown model names the choices, a
missing weights file says what to pass."""

from __future__ import annotations

import pytest
import torch

from hybrid_infer.errors import ModelError
from hybrid_infer.models import ModelSpec


def test_torch_and_torchvision_import_together():
    import torchvision

    assert torchvision.models.resnet18 is not None
    # The nms operator is what a mismatched torch/torchvision build lacks.
    assert hasattr(torch.ops.torchvision, "nms")


def test_pickled_checkpoints_are_refused_unless_allowed(tmp_path):
    path = str(tmp_path / "pickled.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled nn.Module, not tensors
    with pytest.raises(ModelError, match="allow_pickle"):
        ModelSpec("resnet18", weights=path).load_state_dict()


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*resnet18"):
        ModelSpec("resnet9000", weights="random")


def test_missing_weights_file_says_what_to_pass():
    with pytest.raises(ModelError, match="does not exist.*state_dict"):
        ModelSpec("resnet18", weights="/nonexistent/weights.pt")
