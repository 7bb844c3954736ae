"""The `udf` mode: the pandas-UDF recipe this project replaces, kept faithful.

The driver broadcasts the state_dict; every UDF call rebuilds the model, wraps the
Series of bytes in a PyTorch Dataset (PIL decode + the ImageNet transform) and runs a
DataLoader. It is the baseline the benchmarks compare against: correct, not tuned.
Unlike the seed recipe it turns an undecodable row into an `error` value instead of
failing the task, so that every mode honours the same output contract.
"""

from __future__ import annotations

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


def run_udf(df, *, spec, input_col: str, id_cols: list[str], options,
            batch_size: int = 32, loader_workers: int = 0, device: str = "cpu",
            embedding_layer: str | None = None):
    """df -> DataFrame(id_cols..., prediction, error[, top_k]); device "cuda" moves the
    model and each batch to the GPU, as the recipe does there (fp32, no other tuning)."""
    from pyspark.sql.functions import col, pandas_udf

    from hybrid_infer.decode import ArrayDecoder, ImageDecoder
    from hybrid_infer.output import result_batch

    spark = df.sparkSession
    state_dict = spark.sparkContext.broadcast(spec.load_state_dict())
    top_k = options.top_k
    preprocess = options.preprocess
    input_shape = options.input_shape

    class_names = options.class_names

    @pandas_udf(result_spark_ddl(top_k, class_names is not None))
    def predict(values: pd.Series) -> pd.DataFrame:
        import torch
        from torch.utils.data import DataLoader

        from hybrid_infer.actor.runner import LayerTap

        model = spec.build_module()
        model.load_state_dict(state_dict.value)
        model.eval().to(device)
        tap = LayerTap(model, embedding_layer) if embedding_layer else None
        decoder = ArrayDecoder(input_shape) if input_shape else ImageDecoder(preprocess)
        loader = DataLoader(ImageBytesDataset(values, decoder),
                            batch_size=batch_size, num_workers=loader_workers)
        logits, errors = [], []
        with torch.no_grad():
            for images, reasons in loader:
                output = model(images.to(device))
                logits.append((tap.take() if tap else output).cpu().numpy())
                errors.extend(reason or None for reason in reasons)
        stacked = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
        return result_batch(stacked, errors, top_k, class_names).to_pandas()

    result = predict(col(input_col)).alias("_result")
    return df.select(*id_cols, result).select(*id_cols, "_result.*")
