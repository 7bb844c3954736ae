"""Reading model files without running code from them (unless the user opts in).

`torch.load` unpickles, and unpickling can run arbitrary code. Every loader here asks
for ``weights_only=True``; `allow_pickle=True` lifts that for files the user trusts.
"""

from __future__ import annotations

import contextlib
import threading

from hybrid_infer.errors import ModelError

PICKLE_HINT = (" If the file is trusted and holds pickled objects, pass allow_pickle=True "
               "(--allow-pickle): that can run arbitrary code.")

_TORCH_LOAD_LOCK = threading.Lock()


def load_checkpoint(path: str, *, allow_pickle: bool = False) -> dict:
    """Read a state_dict from a .safetensors or torch.save file without running code."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = "" if allow_pickle else PICKLE_HINT
        raise ModelError(f"could not load checkpoint {path!r}: {exc}.{hint}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelError(
            f"checkpoint {path!r} holds a {type(loaded).__name__}, not a state_dict: save "
            "it with torch.save(model.state_dict(), path)"
        )
    return loaded


@contextlib.contextmanager
def weights_only_torch_load(allow_pickle: bool):
    """Within the block, torch.load refuses pickled code unless allow_pickle.

    Library loaders (torch.export.load) fall back to `weights_only=False` on their own
    when a file holds custom objects; this closes that door for untrusted files.
    """
    import torch

    if allow_pickle:
        yield
        return
    with _TORCH_LOAD_LOCK:
        original = torch.load

        def safe_load(*args, **kwargs):
            kwargs["weights_only"] = True
            return original(*args, **kwargs)

        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = original
