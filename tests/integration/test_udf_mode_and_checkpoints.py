"""The udf mode equals direct PyTorch; checkpoint files give the in-memory model's
predictions; a wrong column says which there are; a Parquet binary column is an input.
(Model names and files as pure code: unit/test_model_files.py; the CLI's bad arguments:
unit/test_command_line_options.py; the demo: e2e/test_demo.py.)"""

from __future__ import annotations

import os

import pytest
import torch

from hybrid_infer import infer
from hybrid_infer.errors import InputError
from hybrid_infer.models import ModelSpec

from predictions import TEST_BATCH, TEST_MODEL, assert_matches, local_path, reference_logits


def test_udf_mode_equals_direct_pytorch(images_df, expected):
    assert images_df.rdd.getNumPartitions() == 3
    out = infer(images_df, TEST_MODEL, weights="random", mode="udf", batch_size=TEST_BATCH)
    rows = out.collect()
    assert len(rows) == images_df.count()
    assert_matches(rows, expected)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_file_gives_the_in_memory_predictions(tmp_path, images_df, image_dir, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = ModelSpec("mobilenet_v3_small", weights="random").build_module().eval()
    path = str(tmp_path / f"weights{suffix}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    spec = ModelSpec("mobilenet_v3_small", weights=path)
    paths = sorted(os.path.join(image_dir, n) for n in os.listdir(image_dir))[:6]
    from_file = reference_logits(spec, paths)
    with torch.no_grad():
        from hybrid_infer.decode import ImageDecoder

        decoder = ImageDecoder()
        in_memory = model(torch.stack([decoder(open(p, "rb").read()) for p in paths])).numpy()
    for i, p in enumerate(paths):
        torch.testing.assert_close(torch.from_numpy(from_file[p]), torch.from_numpy(in_memory[i]),
                                   atol=1e-5, rtol=0)
    # and through Spark, in the baseline mode
    subset = images_df.where(images_df.path.isin([f"file:{p}" for p in paths]))
    rows = infer(subset, spec, mode="udf", batch_size=4).collect()
    assert_matches(rows, dict(zip(paths, in_memory)))


def test_wrong_column_lists_the_columns(spark, tmp_path):
    from hybrid_infer.sources import read_parquet

    path = str(tmp_path / "data.parquet")
    spark.createDataFrame([(1, b"x")], "id long, image binary").write.parquet(path)
    with pytest.raises(InputError, match="column 'content' not found.*'id', 'image'"):
        read_parquet(spark, path, column="content")
    with pytest.raises(InputError, match="'id' is bigint, not binary"):
        read_parquet(spark, path, column="id")


def test_parquet_binary_column_input(spark, tmp_path, image_dir, expected):
    paths = sorted(expected)[:5]
    rows = [(local_path(p), open(p, "rb").read()) for p in paths]
    data = str(tmp_path / "images.parquet")
    spark.createDataFrame(rows, "path string, jpeg binary").write.parquet(data)
    from hybrid_infer.sources import read_input

    df = read_input(spark, data, column="jpeg")
    out = infer(df, TEST_MODEL, weights="random",
                mode="udf", input_col="jpeg", batch_size=4).collect()
    assert_matches(out, {p: expected[p] for p in paths})
