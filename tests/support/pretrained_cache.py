"""Pretrained weights in torch's hub cache, placed by the tests (nothing is downloaded
here): a seeded checkpoint under the file name torchvision expects (the last part of the
weights' URL), in a temporary $TORCH_HOME."""

from __future__ import annotations

import os

import pytest

from hybrid_infer.models.torchvision_spec import cached_weights_path, pretrained_weights

MODEL = "resnet18"


def place_checkpoint(name: str, weights: str = "DEFAULT", seed: int = 0, **builder_kwargs):
    """A seeded state_dict saved where torch's hub cache keeps `weights` of `name`."""
    import torch
    import torchvision

    entry = pretrained_weights(name, weights)
    torch.manual_seed(seed)
    module = torchvision.models.get_model_builder(name)(
        weights=None, num_classes=len(entry.meta["categories"]), **builder_kwargs)
    path = cached_weights_path(entry)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"
