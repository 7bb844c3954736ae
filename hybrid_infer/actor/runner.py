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
    memory it was built on (no copy) unless `optimize` asks for a re-layout
    (channels_last re-lays out the batches only). `optimize` ("none", "freeze",
    "compile") is applied once, here, and warmed up on `example_shape` so that its
    cost is paid at pool start, not by a job;
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
        if channels_last and self.device != "cpu":
            # on CPU the batches alone are made channels-last: convolutions follow the
            # input's format (as fast as converting both), and the weights stay zero-copy
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self._tap = LayerTap(module, embedding_layer) if embedding_layer else None
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        #: dtype the device pipeline normalises into: the autocast dtype on a GPU (the
        #: first convolution would cast to it anyway), float32 otherwise.
        self.input_dtype = (self._autocast_dtype if self._autocast_dtype is not None
                            and self.device != "cpu" else torch.float32)
        self._local = threading.local()  # per thread: pinned staging buffer, CUDA stream
        #: A compiled module sees one batch shape only: short batches are padded to it.
        self._pad_to = example_shape[0] if optimize == "compile" else None
        self.optimize_seconds = 0.0
        if optimize != "none":
            started = time.perf_counter()
            self.module = self._optimized(module, optimize, example_shape)
            self.optimize_seconds = time.perf_counter() - started

    def _optimized(self, module, optimize: str, example_shape: tuple[int, ...]):
        """The module after a one-time optimisation, warmed up on an example batch."""
        import torch

        example = torch.zeros(example_shape, dtype=self.input_dtype)
        if optimize == "freeze":
            with warnings.catch_warnings(), torch.no_grad():
                # TorchScript is deprecated in favour of torch.compile but still folds
                # conv+bn and fuses ops with no compiler toolchain and no compile wait.
                warnings.filterwarnings("ignore", category=FutureWarning)
                scripted = torch.jit.script(module)
                module = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
        elif optimize == "compile":
            module = torch.compile(module)
        example = self._in_layout(example.to(self.device))
        for _ in range(2):  # the JIT specialises over its first runs; compile on the first
            with torch.inference_mode(), self._autocast():
                module(example)
        return module

    def _in_layout(self, batch):
        """An image batch (NCHW) in channels-last format when asked, else contiguous (a
        batch may come channels-last from the decoder); others unchanged."""
        import torch

        if batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last if self.channels_last
                                    else torch.contiguous_format)
        return batch

    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu",
                              dtype=self._autocast_dtype)

    def __call__(self, tensors) -> np.ndarray:
        """The outputs for a list of CHW tensors, or for a batch already stacked."""
        import torch

        stacked = isinstance(tensors, torch.Tensor)
        needed = tensors.nbytes if stacked else sum(t.nbytes for t in tensors)
        if self.max_batch_bytes is not None and needed > self.max_batch_bytes:
            raise BatchMemoryError(f"a batch of {len(tensors)} rows needs {needed} bytes, "
                                   f"over max_batch_bytes={self.max_batch_bytes}")
        try:
            if self.device == "cpu":
                return self.forward(tensors if stacked else torch.stack(tensors))
            # One pinned staging buffer per thread, reused: no pin_memory() per batch.
            # The previous copy out of it finished: forward() waited for its outputs.
            staging = self._staging(len(tensors), tensors[0].shape, tensors[0].dtype)
            if stacked:
                staging.copy_(tensors)
            else:
                torch.stack(tensors, out=staging)
            with torch.cuda.stream(self.stream()):
                batch = staging.to(self.device, non_blocking=True)
            return self.forward(batch)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the smaller retries the memory back
            raise

    def _staging(self, rows: int, shape, dtype):
        import torch

        buffer = getattr(self._local, "staging", None)
        if buffer is None or buffer.shape[1:] != shape or buffer.dtype != dtype \
                or buffer.shape[0] < rows:
            buffer = torch.empty((max(rows, self._pad_to or 0), *shape),
                                 dtype=dtype).pin_memory()
            self._local.staging = buffer
        return buffer[:rows]

    def stream(self):
        """This thread's own CUDA stream (None on CPU): model threads and decode threads
        each queue work on their own stream, so decoding overlaps the forward pass."""
        import torch

        if self.device == "cpu":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return stream

    def forward(self, batch) -> np.ndarray:
        """The module on an NCHW batch on this runner's device (input_dtype for the device
        pipeline), run on this thread's stream: the batch must be ready for it (made on
        it, or its stream synchronised). float32 NumPy outputs, waited for."""
        import torch

        rows = batch.shape[0]
        stream = self.stream()
        with (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            if self._pad_to is not None and rows < self._pad_to:
                pad = batch.new_zeros((self._pad_to - rows, *batch.shape[1:]))
                batch = torch.cat([batch, pad])
            batch = self._in_layout(batch)
            with torch.inference_mode(), self._autocast():
                output = self.module(batch)
                if self._tap is not None:
                    output = self._tap.take()
            return output[:rows].float().cpu().numpy()
