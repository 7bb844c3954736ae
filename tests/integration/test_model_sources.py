"""Every model source gives the predictions of the in-memory model it came from.

One small in-memory model (resnet18, 10 classes, seeded) is saved in each format; each
source is loaded directly and through the warm pool, and both must match the in-memory
model's logits. The pool key must tell sources and weight files apart.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hybrid_infer import PoolSettings, Preprocess, infer
from hybrid_infer.errors import ModelError
from hybrid_infer.models import (ExportedProgramSpec, FactorySpec, MLflowSpec, ModelSpec,
                                 TorchScriptSpec, model_spec)
from hybrid_infer.pool.registry import Pool
from hybrid_infer.weights import weights_digest

from predictions import assert_matches

FACTORY = "torchvision.models:resnet18"
KWARGS = {"num_classes": 10}
SMALL = Preprocess(resize=64, crop=64)  # keeps each forward pass cheap on 2 cores
POOL = PoolSettings(num_actors=1, batch_size=8, torch_threads=1, num_cpus_per_actor=0.5)


@pytest.fixture(scope="module")
def in_memory():
    import torch
    import torchvision

    torch.manual_seed(3)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def image_paths(image_dir):
    return sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))


@pytest.fixture(scope="module")
def inputs(image_paths):
    import torch

    from hybrid_infer.decode import ImageDecoder

    decoder = ImageDecoder(SMALL)
    return torch.stack([decoder(open(path, "rb").read()) for path in image_paths])


@pytest.fixture(scope="module")
def expected(in_memory, inputs, image_paths):
    import torch

    with torch.no_grad():
        return dict(zip(image_paths, in_memory(inputs).numpy()))


@pytest.fixture(scope="module")
def saved(in_memory, inputs, tmp_path_factory):
    """The in-memory model saved in every format; name -> spec."""
    import torch
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("models")
    state_dict_path = str(directory / "weights.pt")
    torch.save(in_memory.state_dict(), state_dict_path)
    safetensors_path = str(directory / "weights.safetensors")
    save_file({k: v.contiguous() for k, v in in_memory.state_dict().items()}, safetensors_path)
    script_path = str(directory / "model.pt")
    torch.jit.save(torch.jit.script(in_memory), script_path)
    exported_path = str(directory / "model.pt2")
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(in_memory, (inputs[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, exported_path)
    return {
        "factory+state_dict": FactorySpec(FACTORY, weights=state_dict_path, kwargs=KWARGS),
        "factory+safetensors": FactorySpec(FACTORY, weights=safetensors_path, kwargs=KWARGS),
        "torchscript": model_spec(script_path),
        "torch.export": model_spec(exported_path),
    }


SOURCES = ["factory+state_dict", "factory+safetensors", "torchscript", "torch.export"]


@pytest.mark.parametrize("source", SOURCES)
def test_source_loads_the_same_model(saved, inputs, in_memory, source):
    import torch

    module = saved[source].load_module()
    with torch.no_grad():
        np.testing.assert_allclose(module(inputs).numpy(), in_memory(inputs).numpy(),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("source", SOURCES)
def test_source_through_the_pool(saved, images_df, expected, ray_address, source):
    spec = saved[source]
    before = set(Pool.names())
    try:
        rows = infer(images_df, spec, pool=POOL, preprocess=SMALL,
                     ray_address=ray_address).collect()
        assert_matches(rows, expected, atol=1e-3)
    finally:
        for name in set(Pool.names()) - before:
            Pool.get(name).stop()


def test_model_spec_picks_the_source(saved):
    assert isinstance(model_spec("resnet18", weights="random"), ModelSpec)
    assert isinstance(saved["torchscript"], TorchScriptSpec)
    assert isinstance(saved["torch.export"], ExportedProgramSpec)
    assert isinstance(model_spec(FACTORY), FactorySpec)
    with pytest.raises(ModelError, match="unknown model"):
        model_spec("no_such_model")


def test_pool_key_follows_source_and_weights(saved, in_memory, tmp_path):
    import torch

    identities = {saved[name].identity for name in SOURCES}
    assert len(identities) == 3  # the two factory specs share an architecture...
    digests = {weights_digest(saved[name]) for name in SOURCES}
    assert len(digests) == 4     # ...but every file is its own weights
    # Same bytes in another file: same digest. One changed weight: another digest.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(open(saved["factory+state_dict"].weights, "rb").read())
    assert weights_digest(FactorySpec(FACTORY, weights=str(copy), kwargs=KWARGS)) == \
        weights_digest(saved["factory+state_dict"])
    changed = {k: v.clone() for k, v in in_memory.state_dict().items()}
    changed["fc.bias"][0] += 1.0
    torch.save(changed, copy)
    assert weights_digest(FactorySpec(FACTORY, weights=str(copy), kwargs=KWARGS)) != \
        weights_digest(saved["factory+state_dict"])
    assert weights_digest(FactorySpec(FACTORY, seed=1)) != \
        weights_digest(FactorySpec(FACTORY, seed=2))


class NotAWeight:
    """Unpickling this would run code from the checkpoint's module: refused by default."""


def test_untrusted_pickles_are_refused(in_memory, tmp_path):
    import torch

    path = str(tmp_path / "pickled.pt")
    torch.save({"state_dict": in_memory.state_dict(), "extra": NotAWeight()}, path)
    spec = FactorySpec(FACTORY, weights=path, kwargs=KWARGS)
    with pytest.raises(ModelError, match="allow_pickle=True"):
        spec.load_state_dict()
    trusted = FactorySpec(FACTORY, weights=path, kwargs=KWARGS, allow_pickle=True)
    assert set(trusted.load_state_dict()) == set(in_memory.state_dict())


def test_mlflow_model_uris(in_memory, inputs, tmp_path, monkeypatch):
    """models:/name/version, runs:/..., and a local path, from a file-based tracking store;
    the pt2 format (MLflow 3's default) loads safely, a pickled model only when allowed.

    MLflow is an optional extra; this test fails (it is not skipped) when it is missing.
    """
    import torch

    try:
        import mlflow
        import mlflow.pytorch
    except ImportError:
        pytest.fail("mlflow is not installed: pip install 'hybrid-infer[mlflow]' "
                    "(the MLflow model source cannot be tested without it)")
    # A local file-based tracking store (MLflow 3 keeps it behind an explicit opt-in).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
    example = inputs[:2].numpy()
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(  # batch dimension -1: exported with a dynamic batch
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(in_memory, name="model", input_example=example,
                                 signature=signature, serialization_format="pt2",
                                 registered_model_name="hybrid-infer-test")
        mlflow.pytorch.log_model(in_memory, name="pickled", serialization_format="pickle")
    local_dir = str(tmp_path / "saved")
    mlflow.pytorch.save_model(in_memory, local_dir, input_example=example,
                              signature=signature, serialization_format="pt2")
    with torch.no_grad():
        want = in_memory(inputs).numpy()
        for uri, allow_pickle in (("models:/hybrid-infer-test/1", False),
                                  (f"runs:/{run.info.run_id}/model", False),
                                  (f"mlflow:{local_dir}", False),
                                  (f"runs:/{run.info.run_id}/pickled", True)):
            spec = model_spec(uri, allow_pickle=allow_pickle)
            assert isinstance(spec, MLflowSpec)
            np.testing.assert_allclose(spec.load_module()(inputs).numpy(), want, atol=1e-4,
                                       rtol=0)
            assert weights_digest(spec)
    with pytest.raises(ModelError, match="allow_pickle=True"):
        MLflowSpec(f"runs:/{run.info.run_id}/pickled")
