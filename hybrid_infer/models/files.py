"""Whole-model files: a TorchScript archive (.pt) or a torch.export program (.pt2).

The file holds both the architecture and the weights. The driver reads the weights
out (they go to the object store once, as for every source); each actor reads the
file's structure and takes its weights from the object store (weights.py).
Model files must be readable at the same path on every Ray node (shared storage).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import FileDefinedModel
from hybrid_infer.models.checkpoint import PICKLE_HINT, weights_only_torch_load


def _check_file(path: str, kind: str) -> None:
    if not os.path.isfile(path):
        raise ModelError(f"{kind} file {path!r} does not exist: pass the path of the saved "
                         "model file")


class _WholeModelFile(FileDefinedModel):
    """Shared by the file sources: identity, weights and module from `_load()`."""

    path: str

    @property
    def weights(self) -> str:  # what weights_digest hashes
        return self.path

    @property
    def identity(self) -> str:
        return f"{self.kind}:{os.path.abspath(self.path)}"


@dataclass(frozen=True)
class TorchScriptSpec(_WholeModelFile):
    """A file saved with torch.jit.save. Loading runs no Python pickle: TorchScript code
    is limited to TorchScript operations."""

    path: str
    kind = "torchscript"

    def __post_init__(self):
        _check_file(self.path, "TorchScript")

    def _load(self):
        import torch

        try:
            return torch.jit.load(self.path, map_location="cpu")
        except Exception as exc:
            raise ModelError(f"could not load TorchScript file {self.path!r}: {exc}. Save it "
                             "with torch.jit.save(torch.jit.script(model), path)") from exc


def _exported_module(graph_module):
    """An nn.Module around an exported program's module. Exported graphs are fixed to
    the mode they were exported in (eval), so train()/eval() are no-ops here."""
    import torch

    class ExportedModule(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.graph_module = inner

        def forward(self, *args):
            return self.graph_module(*args)

        def train(self, mode: bool = True):
            return self

    return ExportedModule(graph_module)


@dataclass(frozen=True)
class ExportedProgramSpec(_WholeModelFile):
    """A file saved with torch.export.save (.pt2); export it with a dynamic batch
    dimension. Its weights load without pickle unless allow_pickle=True."""

    path: str
    allow_pickle: bool = False
    kind = "torch.export"

    def __post_init__(self):
        _check_file(self.path, "torch.export")

    def _load(self):
        import torch

        try:
            with weights_only_torch_load(self.allow_pickle):
                program = torch.export.load(self.path)
        except Exception as exc:
            hint = "" if self.allow_pickle else PICKLE_HINT
            raise ModelError(f"could not load exported program {self.path!r}: {exc}.{hint}") \
                from exc
        return _exported_module(program.module())
