"""One string (CLI flag, Transformer param) -> the right model spec."""

from __future__ import annotations

from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import RANDOM_WEIGHTS
from hybrid_infer.models.factory import FactorySpec
from hybrid_infer.models.files import ExportedProgramSpec, TorchScriptSpec
from hybrid_infer.models.mlflow_spec import MLFLOW_SCHEMES, MLflowSpec
from hybrid_infer.models.torchvision_spec import ModelSpec, is_torchvision_model


def model_spec(model, *, weights: str | None = None, seed: int = 0,
               allow_pickle: bool = False):
    """model: a spec (returned as is), a torchvision name, "pkg.module:factory",
    a .pt2 file (torch.export), a .pt/.ts/.jit file (TorchScript), or an MLflow URI
    (models:/name/version, runs:/..., mlflow:/local/dir).

    weights (names and factories): None (a torchvision name's DEFAULT pretrained weights;
    random for a factory), a torchvision weight name ("IMAGENET1K_V2"), a state_dict
    file, or "random"."""
    if not isinstance(model, str):
        return model
    if model.isidentifier() and is_torchvision_model(model):
        return ModelSpec(model, weights=weights, seed=seed, allow_pickle=allow_pickle)
    if model.startswith("mlflow:") and not model.startswith("mlflow-artifacts:"):
        return MLflowSpec(model[len("mlflow:"):], allow_pickle=allow_pickle)
    if model.startswith(MLFLOW_SCHEMES):
        return MLflowSpec(model, allow_pickle=allow_pickle)
    if model.endswith(".pt2"):
        return ExportedProgramSpec(model, allow_pickle=allow_pickle)
    if model.endswith((".pt", ".ts", ".jit")):
        return TorchScriptSpec(model)
    if ":" in model:
        return FactorySpec(model, weights=weights or RANDOM_WEIGHTS, seed=seed,
                           allow_pickle=allow_pickle)
    raise ModelError(f"unknown model {model!r}: use a torchvision classification model "
                     "name (torchvision.models.list_models(), e.g. resnet50), "
                     "'package.module:factory', a .pt TorchScript file, a .pt2 "
                     "torch.export file or an MLflow URI")
