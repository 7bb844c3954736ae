"""Real faulty inputs and fault injectors shared by the reliability tests.

Every sample is real bytes a user could meet: files cut short, broken headers, odd
pixel formats. `SAMPLES` maps a row id to (bytes or None, the reason kind expected in
`error`, or None when the row must decode).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import numpy as np


def _save(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                       np.full_like(x, 90)], -1).astype(np.uint8)
    return np.clip(pixels + rng.integers(0, 20, pixels.shape), 0, 255).astype(np.uint8)


def rgb_jpeg(width: int = 96, height: int = 80, seed: int = 0) -> bytes:
    from PIL import Image

    return _save(Image.fromarray(_gradient(width, height, seed), "RGB"), "JPEG", quality=90)


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG and the 8-bit RGB pixels a careful user expects from it."""
    from PIL import Image

    values = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    png = _save(Image.fromarray(values, mode="I;16"), "PNG")
    grey = np.rint(values / 257.0).astype(np.uint8)
    return png, np.repeat(grey[..., None], 3, axis=-1)


#: Solid frames of the animated GIF sample: a decoder must return the first one.
GIF_FRAME_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

#: Decodes refuse images over this many pixels in the tests (a small, configured limit).
TEST_MAX_PIXELS = 4_000_000


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The RGB pixels the samples are made from (so tests can hand-compute expectations)."""
    return _gradient(width, height, seed)


def make_samples(max_pixels: int = TEST_MAX_PIXELS) -> dict[str, tuple[bytes | None, str | None]]:
    """row id -> (value, expected reason kind or None for a valid image)."""
    from PIL import Image

    good = rgb_jpeg()
    rgb = _gradient(64, 48, seed=3)
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    palette = Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA")
    frames = [Image.new("RGB", (40, 30), colour) for colour in GIF_FRAME_COLOURS]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    side = int(np.sqrt(max_pixels)) + 64  # just over the limit, tiny as a PNG
    bomb = _save(Image.new("L", (side, side)), "PNG", optimize=True)
    header = bytearray(good)
    header[2:40] = bytes(38)  # SOI kept, every header segment after it zeroed
    return {
        "valid_jpeg": (good, None),
        "null": (None, "null value"),
        "zero_bytes": (b"", "empty value (0 bytes)"),
        "not_an_image": (b"this is a text file, not a picture\n" * 8, "not an image"),
        "truncated_jpeg": (good[: len(good) // 2], "truncated or corrupt image data"),
        "corrupt_jpeg_header": (bytes(header), "corrupt image header"),
        "decompression_bomb": (bomb, "image too large"),
        "cmyk_jpeg": (_save(cmyk, "JPEG", quality=95), None),
        "grayscale_jpeg": (_save(Image.fromarray(rgb[..., 0], "L"), "JPEG", quality=95), None),
        "palette_png": (_save(palette, "PNG"), None),
        "rgba_png": (_save(rgba, "PNG"), None),
        "sixteen_bit_png": (sixteen_bit_png()[0], None),
        "animated_gif": (gif.getvalue(), None),
        # 3000x40 resizes to 16800x224 (under the limit) then crops: valid.
        "very_wide_png": (_save(Image.fromarray(_gradient(3000, 40, seed=5), "RGB"), "PNG"),
                          None),
        # 2x3000 would resize to 224x336000: refused before the resize allocates it.
        "very_tall_png": (_save(Image.fromarray(_gradient(2, 3000, seed=6), "RGB"), "PNG"),
                          "extreme aspect ratio"),
    }


def bad_samples() -> dict[str, tuple[bytes | None, str]]:
    """Only the samples that must come back as an error, with their reason kind."""
    return {key: sample for key, sample in make_samples().items() if sample[1] is not None}


def small_jpegs(count: int, seed: int = 0) -> dict[str, bytes]:
    """row id -> a tiny valid JPEG of varied size (fast to decode and infer)."""
    rng = np.random.default_rng(seed)
    return {f"img-{index:05d}": rgb_jpeg(int(rng.integers(40, 90)), int(rng.integers(40, 90)),
                                         seed=index)
            for index in range(count)}


def images_frame(spark, values: dict, partitions: int = 2):
    """DataFrame(id string, content binary) holding `values` in `partitions` partitions."""
    rows = [(key, value) for key, value in values.items()]
    return spark.createDataFrame(rows, "id string, content binary").repartition(partitions, "id")


def reference_rows(spec, values: dict, preprocess) -> dict:
    """row id -> logits of a direct PyTorch run, or the DecodeError reason."""
    import torch

    from hybrid_infer.decode import DecodeError, ImageDecoder

    decoder = ImageDecoder(preprocess)
    module = spec.load_module()
    expected, tensors = {}, {}
    for key, value in values.items():
        try:
            tensors[key] = decoder(value)
        except DecodeError as exc:
            expected[key] = str(exc)
    with torch.no_grad():
        keys = sorted(tensors)
        for start in range(0, len(keys), 64):
            chunk = keys[start:start + 64]
            logits = module(torch.stack([tensors[k] for k in chunk])).numpy()
            expected.update(zip(chunk, logits))
    return expected


def assert_rows_exactly(rows, expected: dict, atol: float = 1e-4) -> dict:
    """Every expected id exactly once; logits equal the direct run; reasons equal.

    Returns {"rows_in", "rows_out", "duplicates", "lost", "errors"} for the report.
    """
    ids = [row["id"] for row in rows]
    duplicates = len(ids) - len(set(ids))
    lost = sorted(set(expected) - set(ids))
    assert duplicates == 0, f"{duplicates} duplicated rows"
    assert not lost, f"{len(lost)} rows lost: {lost[:5]}"
    assert set(ids) == set(expected), "rows that were never sent came back"
    errors = 0
    for row in rows:
        want = expected[row["id"]]
        if isinstance(want, str):
            errors += 1
            assert row["error"] == want and row["prediction"] is None, (row["id"], row["error"])
        else:
            assert row["error"] is None, (row["id"], row["error"])
            np.testing.assert_allclose(np.asarray(row["prediction"], np.float32), want,
                                       atol=atol, rtol=0, err_msg=row["id"])
    return {"rows_in": len(expected), "rows_out": len(ids), "duplicates": duplicates,
            "lost": len(lost), "errors": errors}


# -- the small model every reliability test runs (fast on 2 CPU cores) ------------------
SMALL_MODEL = "mobilenet_v3_small"
SMALL_BATCH = 4


def small_preprocess(**overrides):
    from hybrid_infer.decode import Preprocess

    return Preprocess(**{"resize": 64, "crop": 64, "max_pixels": TEST_MAX_PIXELS, **overrides})


def small_settings(**overrides):
    from hybrid_infer.pool.settings import PoolSettings

    return PoolSettings(**{"num_actors": 2, "batch_size": SMALL_BATCH, "torch_threads": 1,
                           "decode_threads": 1, **overrides})


def actor_pids(pool) -> list[int]:
    return sorted(actor["pid"] for actor in pool.status()["actors"])


def rows_done(pool) -> int | None:
    """Rows the pool's live actors have run, or None while one of them is dead."""
    try:
        return pool.status()["rows"]
    except Exception:
        return None


class ActorKiller(threading.Thread):
    """Kills a pool actor with SIGKILL each time the pool has run `every` more rows.

    Runs beside a job (the job's batches are in flight when it strikes). Records the
    pid killed, when, and how long the pool took to have its full size again.
    """

    def __init__(self, pool, every: int, kills: int = 1, poll_s: float = 0.02):
        super().__init__(daemon=True)
        self.pool, self.every, self.max_kills, self.poll_s = pool, every, kills, poll_s
        self.killed: list[int] = []
        self.recovery_s: list[float] = []
        self.size = len(pool.actors())
        self._halt = threading.Event()

    def stop(self, recover_within_s: float = 60) -> None:
        """Stop striking; first let the pool recover from the last kill (it heals in
        the background, possibly after the job ended)."""
        deadline = time.time() + recover_within_s
        while len(self.recovery_s) < len(self.killed) and time.time() < deadline:
            time.sleep(self.poll_s)
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        baseline = None
        while not self._halt.is_set() and len(self.killed) < self.max_kills:
            done = rows_done(self.pool)
            if done is not None and baseline is None:
                baseline = done
            if done is not None and done - baseline >= self.every:
                pid = max(actor["pid"] for actor in self.pool.status()["actors"])
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
                threading.Thread(target=self._wait_recovered, daemon=True,
                                 args=(pid, time.perf_counter())).start()
                baseline = None
            time.sleep(self.poll_s)

    def _wait_recovered(self, pid: int, killed_at: float) -> None:
        if wait_recovered(self.pool, self.size, pid, halt=self._halt, poll_s=self.poll_s):
            self.recovery_s.append(round(time.perf_counter() - killed_at, 3))


def wait_recovered(pool, size: int, dead_pid: int, *, timeout_s: float = 120, halt=None,
                   poll_s: float = 0.02) -> bool:
    """Wait until the pool again has `size` live actors, none of them `dead_pid`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (halt and halt.is_set()):
        try:
            pids = [a["pid"] for a in pool.status()["actors"]]
        except Exception:
            pids = []
        if len(pids) == size and dead_pid not in pids:
            return True
        time.sleep(poll_s)
    return False


# -- the control plane: kills that reach past the manager --------------------------------
def named_actor_statuses(pool_name: str, timeout_s: float = 2.0) -> list[dict]:
    """status() of every live actor named after the pool, asked directly (not through
    its manager, which may be dead); actors still loading or dying are left out."""
    import ray

    from hybrid_infer.pool.orphans import taken_indices
    from hybrid_infer.runtime import NAMESPACE

    refs = []
    for name in taken_indices(pool_name).values():
        try:
            refs.append(ray.get_actor(name, namespace=NAMESPACE).status.remote())
        except Exception:  # died since it was listed
            continue
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    statuses = []
    for ref in ready:
        try:
            statuses.append(ray.get(ref))
        except Exception:
            continue
    return statuses


def kill_and_wait(pid: int, timeout_s: float = 30) -> None:
    """SIGKILL `pid` and wait until it is gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.kill()
        process.wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass


class PoolChaos(threading.Thread):
    """Kills a pool's actors and its manager (SIGKILL) as a job's rows go by.

    `plan`: (rows run since the start, "actor" or "manager") in order. The rows are
    counted on the actors themselves, through their names, so counting goes on after
    the manager died. An actor is only killed while another one lives (so the job can
    finish), else the kill is recorded as skipped. Each actor kill records how long
    the pool took to have `size` live actors again (a manager killed after it began
    the replacement still leaves it), or None when none came within the job and
    `recover_within_s` (no manager was left to replace it: the next job's does).
    """

    def __init__(self, pool_name: str, manager_pid: int, size: int, plan: list,
                 poll_s: float = 0.1, recover_within_s: float = 30):
        super().__init__(daemon=True)
        self.pool_name, self.manager_pid, self.size = pool_name, manager_pid, size
        self.plan, self.poll_s, self.recover_within_s = list(plan), poll_s, recover_within_s
        self.events: list[dict] = []
        self._rows_seen: dict[str, int] = {}  # actor id -> most rows it reported
        self._waiting: list[threading.Thread] = []
        self._halt = threading.Event()

    def rows_run(self, statuses: list[dict]) -> int:
        for status in statuses:
            seen = self._rows_seen.get(status["actor_id"], 0)
            self._rows_seen[status["actor_id"]] = max(seen, status["rows"])
        return sum(self._rows_seen.values())

    def run(self) -> None:
        baseline = self.rows_run(named_actor_statuses(self.pool_name))
        started = time.perf_counter()
        while self.plan and not self._halt.is_set():
            statuses = named_actor_statuses(self.pool_name)
            done = self.rows_run(statuses) - baseline
            at_rows, kind = self.plan[0]
            if done >= at_rows:
                self.plan.pop(0)
                event = {"kind": kind, "at_rows": done,
                         "at_s": round(time.perf_counter() - started, 2)}
                if kind == "manager":
                    os.kill(self.manager_pid, signal.SIGKILL)
                    event["pid"] = self.manager_pid
                elif len(statuses) >= 2:
                    victim = max(statuses, key=lambda status: status["pid"])
                    os.kill(victim["pid"], signal.SIGKILL)
                    event["pid"] = victim["pid"]
                    event["recovered_s"] = None
                    waiting = threading.Thread(target=self._wait_recovered, daemon=True,
                                               args=(event, time.perf_counter()))
                    waiting.start()
                    self._waiting.append(waiting)
                else:
                    event["skipped"] = "one live actor left"
                self.events.append(event)
            time.sleep(self.poll_s)

    def _wait_recovered(self, event: dict, killed_at: float) -> None:
        deadline = killed_at + self.recover_within_s
        while time.perf_counter() < deadline:
            pids = [status["pid"] for status in named_actor_statuses(self.pool_name)]
            if len(pids) >= self.size and event["pid"] not in pids:
                event["recovered_s"] = round(time.perf_counter() - killed_at, 3)
                return
            time.sleep(self.poll_s)

    def stop(self) -> list[dict]:
        """Stop striking; let pending recoveries finish (the pool heals in the
        background, possibly after the job ended)."""
        self._halt.set()
        self.join(timeout=60)
        for waiting in self._waiting:  # each ends within recover_within_s of its kill
            waiting.join()
        return self.events
