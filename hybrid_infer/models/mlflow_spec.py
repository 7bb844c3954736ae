"""An MLflow model URI: models:/name/version, runs:/run_id/path, or a local directory.

Needs the optional `mlflow` extra (pip install 'hybrid-infer[mlflow]'). The URI is
resolved once, on the driver, to a local copy of the model directory (for a registry
or run URI, MLflow downloads it from the tracking store); its bytes are the weights
digest, so a new model version makes a new pool. MLflow's PyTorch flavour stores the
whole module pickled: loading it can run arbitrary code, so it needs allow_pickle=True.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hybrid_infer.errors import ModelError

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "file:")


def import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise ModelError("MLflow model URIs need MLflow: pip install 'hybrid-infer[mlflow]'") \
            from None
    return mlflow


@dataclass(frozen=True)
class MLflowSpec:
    uri: str
    allow_pickle: bool = False
    tracking_uri: str | None = None
    local_path: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.allow_pickle:
            raise ModelError(
                f"MLflow PyTorch models ({self.uri}) are pickled modules and loading one can "
                "run arbitrary code: pass allow_pickle=True (--allow-pickle) if you trust it, "
                "or export the model as TorchScript / torch.export and load that file")
        if not self.local_path:
            object.__setattr__(self, "local_path", self._download())

    def _download(self) -> str:
        mlflow = import_mlflow()
        if os.path.isdir(self.uri):
            return os.path.abspath(self.uri)
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        try:
            return mlflow.artifacts.download_artifacts(artifact_uri=self.uri)
        except Exception as exc:
            raise ModelError(f"could not resolve MLflow model {self.uri!r}: {exc}. Check the "
                             "name/version and MLFLOW_TRACKING_URI") from exc

    @property
    def weights(self) -> str:  # the directory weights_digest hashes
        return self.local_path

    @property
    def identity(self) -> str:
        return f"mlflow:{self.uri}"

    def _load(self):
        mlflow = import_mlflow()
        try:
            return mlflow.pytorch.load_model(self.local_path, map_location="cpu")
        except Exception as exc:
            raise ModelError(f"could not load MLflow PyTorch model {self.uri!r}: {exc}") \
                from exc

    def build_module(self, *, on_meta: bool = False):
        return self._load()

    def load_state_dict(self) -> dict:
        return {name: tensor.detach() for name, tensor in self._load().state_dict().items()}

    def load_module(self):
        return self._load().eval()
