"""state_dict <-> object-store arrays, digests, and zero-copy module rebuild.

The driver turns a state_dict into NumPy arrays and puts them into Ray's object store
once per pool. Ray hands every actor on a node read-only NumPy views of that node's
single shared-memory copy; `module_from_arrays` wraps those views as tensors without
copying, so N actors on a node hold one copy of the weights, not N.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

# NumPy has no bfloat16: such tensors travel as raw int16 and are viewed back.
_VIEW_AS = {"torch.bfloat16": np.int16}


def state_dict_to_arrays(state_dict: dict) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (contiguous NumPy array, torch dtype name)."""
    import torch

    arrays = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        dtype = str(tensor.dtype)
        if dtype in _VIEW_AS:
            array = tensor.view(torch.int16).numpy()
        else:
            array = tensor.numpy()
        arrays[name] = (array, dtype)
    return arrays


def arrays_to_tensors(arrays: dict[str, tuple[np.ndarray, str]]) -> dict:
    """Tensors that share memory with `arrays` (no copy)."""
    import torch

    tensors = {}
    with warnings.catch_warnings():
        # Object-store arrays are read-only; the tensors are only ever read (inference).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (array, dtype) in arrays.items():
            tensor = torch.from_numpy(array)
            if dtype in _VIEW_AS:
                tensor = tensor.view(getattr(torch, dtype.split(".")[1]))
            tensors[name] = tensor
    return tensors


def module_from_arrays(spec, arrays) -> "torch.nn.Module":  # noqa: F821
    """Rebuild spec's module around the arrays' memory, in eval mode, without grads."""
    module = spec.build_module(on_meta=True)
    module.load_state_dict(arrays_to_tensors(arrays), assign=True)
    for parameter in module.parameters():  # (ScriptModules refuse module.requires_grad_)
        parameter.requires_grad_(False)
    return module.eval()


def nbytes(arrays: dict[str, tuple[np.ndarray, str]]) -> int:
    return sum(array.nbytes for array, _ in arrays.values())


_DIGEST_CACHE: dict = {}


def weights_digest(spec) -> str:
    """Identify the weights without building the model: the seed, or the bytes of the
    weights file (or of every file of a model directory, e.g. an MLflow model)."""
    if spec.weights == "random":
        return f"random-seed-{spec.seed}"
    paths = _files_under(spec.weights)
    stats = [os.stat(path) for path in paths]
    cache_key = tuple((os.path.abspath(p), s.st_size, s.st_mtime_ns) for p, s in zip(paths, stats))
    if cache_key not in _DIGEST_CACHE:
        hasher = hashlib.blake2b(digest_size=16)
        for path in paths:
            if os.path.isdir(spec.weights):  # a directory: names count too
                hasher.update(os.path.relpath(path, spec.weights).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    hasher.update(chunk)
        _DIGEST_CACHE[cache_key] = hasher.hexdigest()
    return _DIGEST_CACHE[cache_key]


def _files_under(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                  for name in names)
