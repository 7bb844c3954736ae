"""Every file an input folder holds comes back exactly once, and a
slice of bad rows gets per-row answers through a real job.

Unreadable files: the tests run as root, for whom chmod 000 is still readable, so an
unreadable file is made as a broken symbolic link and as a FIFO (named pipe).
"""

from __future__ import annotations

import os

import pytest

from faults import SMALL_MODEL, rgb_jpeg, small_preprocess, small_settings
from hybrid_infer.models import ModelSpec
from hybrid_infer.sources import glob_matches, read_images_listed

#: file name -> the error kind it must come back with (None: a prediction)
IMAGES = {
    "lower.jpg": None, "Mixed.Jpg": None, "UPPER.JPEG": None, "photo.jfif": None,
    "photo.jpe": None, "no_extension": None, "scan.TIFF": None, "icon.Png": None,
    "sub/nested.GIF": None, "sub/deeper/deep.BMP": None, "sub/deeper/deep.webp": None,
}
NOT_IMAGES = {"notes.txt": "not an image", "sub/page.eps": "unsupported image format"}
EMPTY = {"empty.jpg": "empty value (0 bytes)", "sub/empty_too.png": "empty value (0 bytes)"}
UNREADABLE = {"dangling.jpg": "unreadable file: broken symbolic link",
              "pipe.jpg": "unreadable file: not a regular file (FIFO)"}
HIDDEN = [".DS_Store", "_SUCCESS", ".hidden/inside.jpg"]


def _image_bytes(name: str) -> bytes:
    import io

    from PIL import Image

    fmt = {".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP", ".tiff": "TIFF",
           ".png": "PNG"}.get(os.path.splitext(name)[1].lower())
    if fmt is None:
        return rgb_jpeg(64, 48, seed=len(name))
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (20, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_input")
    contents = {**{name: _image_bytes(name) for name in IMAGES},
                "notes.txt": b"shopping list\n", "sub/page.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n",
                **{name: b"" for name in EMPTY}, ".DS_Store": b"\0\1", "_SUCCESS": b"",
                ".hidden/inside.jpg": rgb_jpeg(30, 30)}
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.symlink(str(root / "gone.jpg"), str(root / "dangling.jpg"))
    os.mkfifo(str(root / "pipe.jpg"))
    return str(root)


def expected_rows(root: str, names) -> set[str]:
    return {"file:" + os.path.join(root, name) for name in names}


ROWS = {**IMAGES, **NOT_IMAGES, **EMPTY, **UNREADABLE}


def test_every_file_comes_back_exactly_once(spark, input_dir):
    df, listing = read_images_listed(spark, input_dir)
    paths = [row.path for row in df.select("path").collect()]
    assert len(paths) == len(set(paths)) == len(ROWS) == listing.files
    assert set(paths) == expected_rows(input_dir, ROWS)
    assert sorted(listing.hidden) == sorted(os.path.join(input_dir, n) for n in HIDDEN)
    assert set(listing.empty) == expected_rows(input_dir, EMPTY)
    assert set(listing.unreadable) == expected_rows(input_dir, UNREADABLE)
    assert "3 hidden files skipped" in listing.skipped_lines()[0]


def test_recursive_lookup_off_reads_the_top_folder_only(spark, input_dir):
    df, listing = read_images_listed(spark, input_dir, recursive=False)
    top = [name for name in ROWS if "/" not in name]
    assert sorted(row.path for row in df.select("path").collect()) == \
        sorted(expected_rows(input_dir, top))
    assert listing.files == len(top)


def test_the_users_glob_filter_excludes_files(spark, input_dir):
    glob = "*.{jpg,Jpg}"
    df, listing = read_images_listed(spark, input_dir, glob=glob)
    kept = [name for name in ROWS if glob_matches(glob, os.path.basename(name))]
    assert sorted(kept) == sorted(["lower.jpg", "Mixed.Jpg", "empty.jpg", "dangling.jpg",
                                   "pipe.jpg"])
    assert sorted(row.path for row in df.select("path").collect()) == \
        sorted(expected_rows(input_dir, kept))
    assert listing.excluded == len(ROWS) - len(kept)
    assert f"excluded by the filter {glob!r}" in listing.skipped_lines()[-1]


def test_a_uri_input_finds_empty_files_through_sparks_own_listing(spark, input_dir):
    """hdfs://, s3a://, file: URIs: no local listing; the 0-byte files Spark drops are
    found by comparing its file index with the files its scan returns."""
    sub = os.path.join(input_dir, "sub")
    df, listing = read_images_listed(spark, "file://" + sub)
    rows = {row.path: row.content for row in df.collect()}
    want = {name for name in ROWS if name.startswith("sub/")}
    assert set(rows) == expected_rows(input_dir, want)
    assert rows["file:" + os.path.join(sub, "empty_too.png")] == bytearray()
    assert listing.empty == ["file:" + os.path.join(sub, "empty_too.png")]


def test_glob_matches_like_hadoop():
    assert glob_matches("*.{jpg,png}", "a.png") and not glob_matches("*.{jpg,png}", "a.PNG")
    assert glob_matches("img_??.j*", "img_01.jpeg") and glob_matches("[ab]*", "b1")
    assert glob_matches("*.{jp{e,}g,tif}", "x.jpeg") and glob_matches("*.{jp{e,}g,tif}", "x.jpg")


def test_job_returns_every_file_with_its_reason(spark, input_dir, ray_address, small_pool,
                                                tmp_path):
    from hybrid_infer.api import JobOptions
    from hybrid_infer.job import run_job

    output = str(tmp_path / "out.parquet")
    summary = run_job(spark, input_path=input_dir, output_path=output, progress=False,
                      model=ModelSpec(SMALL_MODEL, weights="random"), pool=small_settings(),
                      ray_address=ray_address, job=JobOptions(preprocess=small_preprocess()))
    rows = spark.read.parquet(output).collect()
    got = {row.path: row.error for row in rows}
    assert len(rows) == len(got) == summary.rows == summary.input_files == len(ROWS)
    for name, reason in ROWS.items():
        error = got["file:" + os.path.join(input_dir, name)]
        if reason is None:
            assert error is None, (name, error)
        else:
            assert error is not None and error.startswith(reason), (name, error)
    text = summary.render()
    assert f"input files {len(ROWS)}, one row each" in text
    assert "skipped: 3 hidden files skipped" in text
    assert "rows failed: unreadable file" in text and "rows failed: empty value" in text


def test_a_partition_of_only_bad_rows_gets_per_row_answers(spark, ray_address, small_pool):
    """Issue 14's reproducer: 5 good rows and 1 junk row, one row per partition, with
    top_k (and labels): the junk row's slice has no successful row at all."""
    from hybrid_infer import infer

    rows = [(f"good-{i}", rgb_jpeg(60, 50, seed=i)) for i in range(5)] + [("junk", b"junk")]
    df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 6),
                               "id string, content binary")
    assert sorted(len(p) for p in df.rdd.glom().collect() if p) == [1] * 6
    names = [f"class-{i}" for i in range(1000)]
    for options in ({"top_k": 3}, {"top_k": 3, "class_names": names}):
        out = infer(df, SMALL_MODEL, weights="random", pool=small_settings(),
                    preprocess=small_preprocess(), ray_address=ray_address,
                    **options).collect()
        by_id = {row.id: row for row in out}
        assert sorted(by_id) == sorted(key for key, _ in rows)
        junk = by_id["junk"]
        assert junk.error == "not an image (unrecognised format)"
        assert junk.prediction is None and junk.top_k is None
        for key in (k for k in by_id if k != "junk"):
            assert by_id[key].error is None and len(by_id[key].top_k.indices) == 3
            if "class_names" in options:
                assert by_id[key].top_k.labels == [names[i] for i in by_id[key].top_k.indices]
