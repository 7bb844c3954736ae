"""The `udf` mode: the pandas-UDF recipe this project replaces, kept faithful.

The driver ships the state_dict (a broadcast on a classic session; a file in the
session's artifacts on Spark Connect, which has no broadcast); every UDF call rebuilds
the model, wraps the
Series of bytes in a PyTorch Dataset (PIL decode + the ImageNet transform) and runs a
DataLoader. It is the baseline the benchmarks compare against: correct, not tuned.
Unlike the seed recipe it turns an undecodable row into an `error` value instead of
failing the task, so that every mode honours the same output contract.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile

import numpy as np
import pandas as pd

from hybrid_infer.output import result_spark_ddl


class ImageBytesDataset:
    """A map-style torch Dataset over a pandas Series of image bytes."""

    def __init__(self, values: pd.Series, decoder):
        self.values = values.reset_index(drop=True)
        self.decoder = decoder

    def __len__(self):
        return len(self.values)

    def __getitem__(self, index):
        import torch

        from hybrid_infer.decode import DecodeError

        try:
            return self.decoder(self.values[index]), ""
        except DecodeError as exc:
            shape = getattr(self.decoder, "shape", None)  # ArrayDecoder: non-image rows
            if shape is None:
                shape = (3, self.decoder.preprocess.crop, self.decoder.preprocess.crop)
            return torch.zeros(shape), str(exc)


class BroadcastWeights:
    """The state_dict as a Spark broadcast (classic sessions); call it for the dict."""

    def __init__(self, spark, state_dict):
        self._broadcast = spark.sparkContext.broadcast(state_dict)

    def __call__(self):
        return self._broadcast.value


class ArtifactWeights:
    """The state_dict as a file in a Spark Connect session's artifacts (`addArtifacts(...,
    file=True)`), read in the UDF through SparkFiles; call it for the dict. The file is
    named by its digest, so a job that ships the same weights again adds nothing new."""

    def __init__(self, spark, state_dict):
        import torch

        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        data = buffer.getvalue()
        self.name = f"hybrid-infer-weights-{hashlib.sha256(data).hexdigest()[:20]}.pt"
        folder = tempfile.mkdtemp(prefix="hybrid-infer-weights-")
        try:
            path = os.path.join(folder, self.name)
            with open(path, "wb") as handle:
                handle.write(data)
            spark.addArtifacts(path, file=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def __call__(self):
        import torch
        from pyspark import SparkFiles

        return torch.load(SparkFiles.get(self.name), map_location="cpu", weights_only=True)


def ship_weights(spark, state_dict):
    """The state_dict where every UDF call can read it, for a classic or Connect session."""
    from hybrid_infer.runtime import is_connect

    return (ArtifactWeights if is_connect(spark) else BroadcastWeights)(spark, state_dict)


#: ActorSettings the baseline cannot honour because they would change its numbers; the
#: others it either honours (batch_size, device, precision, torch_threads,
#: embedding_layer) or are pool throughput tuning that does not apply to it.
REFUSED = {"optimize": "none"}


def check_udf_settings(actor) -> None:
    """Refuse the actor settings the udf baseline cannot honour, naming the way out."""
    from hybrid_infer.errors import ConfigurationError

    for name, default in REFUSED.items():
        if getattr(actor, name) != default:
            raise ConfigurationError(
                f"mode='udf' cannot run {name}={getattr(actor, name)!r} (it rebuilds the "
                f"model in every UDF call): use mode='hybrid', whose pool pays it once per "
                f"actor, or leave {name} at {default!r}")


def run_udf(df, *, spec, input_col: str, id_cols: list[str], options, actor=None,
            loader_workers: int = 0):
    """df -> DataFrame(id_cols..., prediction, error[, top_k]).

    actor: ActorSettings; honoured: batch_size, device ("auto": a GPU when the Spark
    worker sees one; "cuda" fails clearly without one), precision (autocast),
    torch_threads and embedding_layer.
    """
    from pyspark.sql.functions import col, pandas_udf

    from hybrid_infer.decode import ArrayDecoder, ImageDecoder
    from hybrid_infer.output import result_batch
    from hybrid_infer.pool.settings import ActorSettings

    actor = actor or ActorSettings()
    check_udf_settings(actor)
    # The recipe's batch and precision stay the CPU defaults unless given (no GPU tuning).
    batch_size = actor.for_device("cpu").batch_size
    embedding_layer, precision = actor.embedding_layer, actor.precision or "fp32"
    requested_device, threads = actor.device, actor.torch_threads

    spark = df.sparkSession
    weights = ship_weights(spark, spec.load_state_dict())
    top_k = options.top_k
    preprocess = options.preprocess
    input_shape = options.input_shape

    class_names = options.class_names

    @pandas_udf(result_spark_ddl(top_k, class_names is not None))
    def predict(values: pd.Series) -> pd.DataFrame:
        import torch
        from torch.utils.data import DataLoader

        from hybrid_infer.actor.runner import LayerTap

        device = _udf_device(requested_device)
        if threads:
            torch.set_num_threads(threads)
        model = spec.build_module()
        model.load_state_dict(weights())
        model.eval().to(device)
        tap = LayerTap(model, embedding_layer) if embedding_layer else None
        decoder = ArrayDecoder(input_shape) if input_shape else ImageDecoder(preprocess)
        loader = DataLoader(ImageBytesDataset(values, decoder),
                            batch_size=batch_size, num_workers=loader_workers)
        logits, errors = [], []
        with torch.no_grad():
            for images, reasons in loader:
                with _autocast(device, precision):
                    output = model(images.to(device))
                    output = tap.take() if tap else output
                logits.append(output.float().cpu().numpy())
                errors.extend(reason or None for reason in reasons)
        stacked = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
        return result_batch(stacked, errors, top_k, class_names).to_pandas()

    result = predict(col(input_col)).alias("_result")
    return df.select(*id_cols, result).select(*id_cols, "_result.*")


def _udf_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        from hybrid_infer.errors import ConfigurationError

        raise ConfigurationError("device='cuda' was asked for but this Spark worker sees no "
                                 "GPU: use device='auto' or 'cpu', or mode='hybrid' with "
                                 "GPU actors (num_gpus_per_actor)")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device, dtype=dtype) if dtype else contextlib.nullcontext()
