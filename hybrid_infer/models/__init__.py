"""Where a model comes from: every source gives one small, picklable spec.

A spec travels to Spark tasks and Ray actors, which rebuild the module from it; the
weights travel separately, once, through the object store (see weights.py). Every
spec has the same interface:

- ``identity``: what the architecture is (part of the pool key);
- ``weights``: "random" (with ``seed``) or the file/directory (for pretrained
  torchvision weights, the file in torch's hub cache) whose bytes identify
  the weights (weights.weights_digest hashes it: the other part of the pool key);
- ``build_module(on_meta=...)``, ``load_state_dict()``, ``load_module()``.

Sources: a torchvision name (ModelSpec: its pretrained weights by default), a Python
factory + state_dict (FactorySpec), a TorchScript file (TorchScriptSpec), a
torch.export program (ExportedProgramSpec), an MLflow model URI (MLflowSpec, needs the `mlflow` extra). `model_spec()` picks one from
a string. No source unpickles Python objects unless the user passes allow_pickle=True.
"""

from hybrid_infer.models.checkpoint import load_checkpoint
from hybrid_infer.models.factory import FactorySpec
from hybrid_infer.models.files import ExportedProgramSpec, TorchScriptSpec
from hybrid_infer.models.mlflow_spec import MLflowSpec
from hybrid_infer.models.resolve import model_spec
from hybrid_infer.models.base import RANDOM_WEIGHTS, RandomWeightsWarning, warn_if_random
from hybrid_infer.models.torchvision_spec import (DEFAULT_WEIGHTS, TORCHVISION_MODELS, ModelSpec,
                                                 is_torchvision_model)

__all__ = [
    "DEFAULT_WEIGHTS", "RANDOM_WEIGHTS", "TORCHVISION_MODELS", "ExportedProgramSpec",
    "FactorySpec", "MLflowSpec", "ModelSpec", "RandomWeightsWarning", "TorchScriptSpec",
    "is_torchvision_model", "load_checkpoint", "model_spec", "warn_if_random",
]
