"""An MLflow model URI: models:/name/version, runs:/run_id/path, or a local directory.

Needs the optional `mlflow` extra (pip install 'hybrid-infer[mlflow]'). The URI is
resolved once, on the driver, to a local copy of the model directory (for a registry
or run URI, MLflow downloads it from the tracking store); its bytes are the weights
digest, so a new model version makes a new pool. MLflow's PyTorch flavour saves a
model either as a torch.export program (`data/model.pt2`, MLflow 3's default: loaded
as safely as any .pt2 file) or as a pickled module (loading it can run arbitrary code,
so it needs allow_pickle=True).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import FileDefinedModel
from hybrid_infer.models.files import ExportedProgramSpec

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "file:")
#: Where MLflow's PyTorch flavour puts a model saved with serialization_format="pt2".
EXPORTED_PROGRAM_FILE = os.path.join("data", "model.pt2")


def import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise ModelError("MLflow model URIs need MLflow: pip install 'hybrid-infer[mlflow]'") \
            from None
    return mlflow


@dataclass(frozen=True)
class MLflowSpec(FileDefinedModel):
    uri: str
    allow_pickle: bool = False
    tracking_uri: str | None = None
    local_path: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.local_path:
            object.__setattr__(self, "local_path", self._download())
        if self._exported_program() is None and not self.allow_pickle:
            raise ModelError(
                f"MLflow model {self.uri} is a pickled PyTorch module and loading it can run "
                "arbitrary code: pass allow_pickle=True (--allow-pickle) if you trust it, or "
                "log it with serialization_format='pt2' (MLflow 3's default)")

    def _exported_program(self) -> ExportedProgramSpec | None:
        path = os.path.join(self.local_path, EXPORTED_PROGRAM_FILE)
        if not os.path.isfile(path):
            return None
        return ExportedProgramSpec(path, allow_pickle=self.allow_pickle)

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
        exported = self._exported_program()
        if exported is not None:
            return exported._load()
        mlflow = import_mlflow()
        try:
            return mlflow.pytorch.load_model(self.local_path, map_location="cpu")
        except Exception as exc:
            raise ModelError(f"could not load MLflow PyTorch model {self.uri!r}: {exc}") \
                from exc
