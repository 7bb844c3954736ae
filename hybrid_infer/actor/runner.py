"""One module on one device: placement, precision and the forward pass for a batch."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import numpy as np


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from hybrid_infer.errors import ConfigurationError

        raise ConfigurationError("device='cuda' was asked for but this actor sees no GPU: "
                                 "give the pool num_gpus_per_actor > 0 or use device='auto'")
    return requested


class BatchMemoryError(MemoryError):
    """A model batch needs more host memory than PoolSettings.max_batch_bytes allows."""


class LayerTap:
    """Keeps the output of `module`'s layer named `layer` (e.g. "avgpool") from the last
    forward pass, flattened to (n, features): embeddings instead of the final output."""

    def __init__(self, module, layer: str):
        from hybrid_infer.errors import ModelError

        try:
            target = module.get_submodule(layer)
        except AttributeError:
            names = [name for name, _ in module.named_modules() if name][:30]
            raise ModelError(f"the model has no layer {layer!r}: use one of {names}") from None
        self._local = threading.local()  # streams run forward passes concurrently
        target.register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, output) -> None:
        self._local.output = output

    def take(self):
        output, self._local.output = self._local.output, None
        return output.flatten(1)


class ModelRunner:
    """Runs `module` on lists of CHW tensors and returns float32 NumPy logits; safe to
    call from several threads at once (the pipeline's streams).

    On GPU the batch is staged in pinned host memory and copied with non_blocking=True;
    autocast runs in the chosen precision. On CPU the module keeps the object-store
    memory it was built on (no copy) unless channels_last or `optimize` asks for a
    re-layout. `optimize` ("none", "freeze", "compile") is applied once, here, and
    warmed up on `example_shape` so that its cost is paid at pool start, not by a job;
    `optimize_seconds` reports that cost.
    A batch over `max_batch_bytes`, or one hitting CUDA out-of-memory, raises a
    MemoryError-like error: the pipeline splits it and retries the halves.
    """

    def __init__(self, module, *, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, max_batch_bytes: int | None = None,
                 optimize: str = "none", example_shape: tuple[int, ...] = (8, 3, 224, 224),
                 embedding_layer: str | None = None):
        import torch

        self.max_batch_bytes = max_batch_bytes
        self.device = resolve_device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.optimize = optimize
        if self.device != "cpu":
            module = module.to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self._tap = LayerTap(module, embedding_layer) if embedding_layer else None
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.optimize_seconds = 0.0
        if optimize != "none":
            started = time.perf_counter()
            self.module = self._optimized(module, optimize, example_shape)
            self.optimize_seconds = time.perf_counter() - started

    def _optimized(self, module, optimize: str, example_shape: tuple[int, ...]):
        """The module after a one-time optimisation, warmed up on an example batch."""
        import torch

        example = torch.zeros(example_shape)
        if optimize == "freeze":
            with warnings.catch_warnings(), torch.no_grad():
                # TorchScript is deprecated in favour of torch.compile but still folds
                # conv+bn and fuses ops with no compiler toolchain and no compile wait.
                warnings.filterwarnings("ignore", category=FutureWarning)
                scripted = torch.jit.script(module)
                module = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
        elif optimize == "compile":
            module = torch.compile(module)
        example = example.to(self.device)
        if self.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        for _ in range(2):  # the JIT specialises over its first runs; compile on the first
            with torch.inference_mode(), self._autocast():
                module(example)
        return module

    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu",
                              dtype=self._autocast_dtype)

    def __call__(self, tensors: list) -> np.ndarray:
        import torch

        needed = sum(t.nbytes for t in tensors)
        if self.max_batch_bytes is not None and needed > self.max_batch_bytes:
            raise BatchMemoryError(f"a batch of {len(tensors)} rows needs {needed} bytes, "
                                   f"over max_batch_bytes={self.max_batch_bytes}")
        try:
            batch = torch.stack(tensors)
            if self.device != "cpu":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self._autocast():
                output = self.module(batch)
                if self._tap is not None:
                    output = self._tap.take()
            return output.float().cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the smaller retries the memory back
            raise
