"""ceiling: the model alone on pre-decoded tensors in a tight loop (eager and with the
pool's optimisation, in one-batch and the pool's stream layouts), plus decode alone."""

from __future__ import annotations

import collections
import os
import time

import numpy as np

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import image_paths, make_runner, save_logits
from hybrid_infer.models import ModelSpec


def run(config: ContenderConfig) -> dict:
    """Model alone over pre-decoded tensors (eager, and with the pool's optimisation),
    and decode alone (one thread, and the pool's decode thread count)."""
    from concurrent.futures import ThreadPoolExecutor

    from hybrid_infer.decode import ImageDecoder

    paths = image_paths(config.image_dir, config.rows)
    blobs = [open(p, "rb").read() for p in paths]
    decoder = ImageDecoder()
    decoder(blobs[0])  # warm-up: imports and the first PIL decode
    started = time.perf_counter()
    tensors = [decoder(b) for b in blobs]
    decode_1 = len(blobs) / (time.perf_counter() - started)
    with ThreadPoolExecutor(config.decode_threads) as pool:
        started = time.perf_counter()
        list(pool.map(decoder, blobs))
        decode_n = len(blobs) / (time.perf_counter() - started)

    spec = ModelSpec(config.model, seed=config.seed, weights="random")
    result = {"decode_images_per_s_1_thread": round(decode_1, 2),
              f"decode_images_per_s_{config.decode_threads}_threads": round(decode_n, 2),
              "model": {}}
    for variant in ["none"] + ([config.optimize] if config.optimize != "none" else []):
        started = time.perf_counter()
        runner = make_runner(config, spec.load_module(), optimize=variant)
        prepare_s = time.perf_counter() - started
        for streams, stream_threads in ceiling_layouts(config, runner.device, variant):
            label = variant if streams == 1 else f"{variant}, {streams} streams"
            seconds, outputs = timed_streams(runner, tensors, config.batch_size, streams,
                                             stream_threads)
            result["model"][label] = {
                "images_per_s": round(len(tensors) / seconds, 2), "optimize": variant,
                "streams": streams, "threads_per_stream": stream_threads,
                "prepare_s": round(prepare_s, 3), "optimize_s": round(runner.optimize_seconds, 3)}
            print(f"[ceiling {label}] {len(tensors) / seconds:.2f} images/s", flush=True)
            if streams > 1:
                continue
            if variant == "none":
                save_logits(config.work_dir, paths, outputs)
            else:
                np.savez(os.path.join(config.work_dir, f"logits_{variant}.npz"),
                         paths=np.array(paths), logits=outputs)
    print(f"[decode] {decode_1:.1f} images/s on 1 thread, {decode_n:.1f} on "
          f"{config.decode_threads}", flush=True)
    return result


def ceiling_layouts(config: ContenderConfig, device: str, optimize: str) -> list[tuple[int, int]]:
    """(streams, threads per stream): one batch over every thread, and the pool's layout."""
    from hybrid_infer.pool.settings import PoolSettings

    settings = PoolSettings(batch_size=config.batch_size, optimize=optimize,
                            streams=config.streams)
    pool_layout = settings.stream_layout(device, config.threads)
    return sorted({(1, config.threads), pool_layout})


def timed_streams(runner, tensors: list, batch: int, streams: int,
                  stream_threads: int) -> tuple[float, np.ndarray]:
    """Seconds to run every tensor through `runner`, `streams` threads each taking
    batch/streams rows at a time on `stream_threads` torch threads (the pool's
    layout); one untimed call first. Returns (seconds, outputs in input order)."""
    import threading

    import torch

    rows = -(-batch // streams)
    chunks = collections.deque(enumerate(range(0, len(tensors), rows)))
    outputs: dict[int, np.ndarray] = {}

    def work() -> None:
        torch.set_num_threads(stream_threads)
        while True:
            try:
                index, offset = chunks.popleft()
            except IndexError:
                return
            outputs[index] = runner(tensors[offset:offset + rows])

    torch.set_num_threads(stream_threads)
    runner(tensors[:rows])  # warm-up: one call, untimed (stated in the report)
    threads = [threading.Thread(target=work) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return seconds, np.concatenate([outputs[index] for index in sorted(outputs)])
