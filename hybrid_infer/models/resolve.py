"""One string (CLI flag, Transformer param) -> the right model spec."""

from __future__ import annotations

from hybrid_infer.errors import ModelError
from hybrid_infer.models.factory import FactorySpec
from hybrid_infer.models.files import ExportedProgramSpec, TorchScriptSpec
from hybrid_infer.models.mlflow_spec import MLFLOW_SCHEMES, MLflowSpec
from hybrid_infer.models.torchvision_spec import RANDOM_WEIGHTS, SUPPORTED_MODELS, ModelSpec


def model_spec(model, *, weights: str = RANDOM_WEIGHTS, seed: int = 0,
               allow_pickle: bool = False):
    """model: a spec (returned as is), a torchvision name, "pkg.module:factory",
    a .pt2 file (torch.export), a .pt/.ts/.jit file (TorchScript), or an MLflow URI
    (models:/name/version, runs:/..., mlflow:/local/dir)."""
    if not isinstance(model, str):
        return model
    if model in SUPPORTED_MODELS:
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
        return FactorySpec(model, weights=weights, seed=seed, allow_pickle=allow_pickle)
    raise ModelError(f"unknown model {model!r}: use a torchvision name "
                     f"({', '.join(SUPPORTED_MODELS)}), 'package.module:factory', a .pt "
                     "TorchScript file, a .pt2 torch.export file or an MLflow URI")
