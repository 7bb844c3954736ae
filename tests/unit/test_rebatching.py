"""An actor's pipeline re-batches small requests into full model batches, whatever the
machine's load: the requests are queued while the model is busy, then released.

(It replaces tests/test_pool.py::test_rebatching_fills_model_batches, which counted a
real pool's batches and failed under load, when requests did not arrive together.)
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from hybrid_infer.actor.pipeline import InferencePipeline

BATCH = 8
REQUESTS, ROWS_PER_REQUEST = 8, 3  # 24 rows, 3 at a time, as a Spark task sends them


class GatedModel:
    """A real torch module whose first forward pass waits until the test opens the gate:
    the requests that arrive meanwhile queue behind it. Records every batch's size."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(3, 2).eval()
        self.gate = threading.Event()
        self.held = 0  # the rows of the first batch, once it waits at the gate
        self.batch_sizes: list[int] = []

    def __call__(self, tensors: list) -> np.ndarray:
        if not self.gate.is_set() and not self.held:
            self.held = len(tensors)
            self.gate.wait(30)
        self.batch_sizes.append(len(tensors))
        with torch.no_grad():
            return self.module(torch.stack(tensors)).numpy()


def decode(value: int) -> torch.Tensor:
    return torch.full((3,), float(value))


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the pipeline did not get there in time"
        time.sleep(0.01)


def test_small_requests_queued_behind_the_model_run_as_full_batches():
    model = GatedModel()
    # room to decode every row ahead of the model: none waits for a prefetch slot
    pipeline = InferencePipeline(model, batch_size=BATCH, decode_threads=2,
                                 prefetch_batches=REQUESTS * ROWS_PER_REQUEST // BATCH + 1)
    answers: dict[int, tuple] = {}

    def send(request: int) -> None:
        values = [request * ROWS_PER_REQUEST + row for row in range(ROWS_PER_REQUEST)]
        answers[request] = pipeline.run(values, decode, timeout=60)

    senders = [threading.Thread(target=send, args=(r,), daemon=True) for r in range(REQUESTS)]
    for sender in senders:
        sender.start()
    total = REQUESTS * ROWS_PER_REQUEST
    try:
        # the model holds its first batch; every other row is decoded and waits in the queue
        wait_for(lambda: model.held and model.held + pipeline._ready.qsize() == total)
        first = model.held
    finally:
        model.gate.set()
    for sender in senders:
        sender.join(60)
    assert len(answers) == REQUESTS

    rest = total - first
    assert model.batch_sizes == [first] + [BATCH] * (rest // BATCH) + \
        ([rest % BATCH] if rest % BATCH else []), model.batch_sizes
    assert len(model.batch_sizes) <= 1 + -(-rest // BATCH) < total // ROWS_PER_REQUEST
    # and every row's answer is its own, in its request's order
    with torch.no_grad():
        for request, (outputs, errors) in answers.items():
            values = [request * ROWS_PER_REQUEST + row for row in range(ROWS_PER_REQUEST)]
            want = model.module(torch.stack([decode(v) for v in values])).numpy()
            assert errors == [None] * ROWS_PER_REQUEST
            np.testing.assert_allclose(outputs, want, rtol=0, atol=1e-6)


def test_a_batch_past_its_timeout_is_the_pools_timeout_error():
    """Raised as PoolTimeoutError in the actor, where it happens (nothing downstream
    guesses it from a builtin TimeoutError)."""
    from hybrid_infer.errors import PoolTimeoutError

    model = GatedModel()  # holds its first batch until the gate opens
    pipeline = InferencePipeline(model, batch_size=BATCH, decode_threads=1)
    try:
        with pytest.raises(PoolTimeoutError, match="batch_timeout_s"):
            pipeline.run([1, 2, 3], decode, timeout=0.2)
    finally:
        model.gate.set()


def test_rows_are_decoded_oldest_stream_first_whatever_their_arrival():
    """Spark's tasks then finish one after another: the next wave's task starts while
    the pool still holds the others' rows, instead of every task ending at once."""
    computed: list[int] = []

    def model(tensors: list) -> np.ndarray:
        computed.extend(int(t[0]) for t in tensors)
        return np.zeros((len(tensors), 1), dtype=np.float32)

    first_decode = threading.Event()
    release = threading.Event()

    def held_decode(value: int) -> torch.Tensor:  # holds the only decode thread
        first_decode.set()
        release.wait(30)
        return decode(value)

    pipeline = InferencePipeline(model, batch_size=1, decode_threads=1)
    now = time.monotonic()
    runs = [threading.Thread(target=pipeline.run, args=([0], held_decode, 60), daemon=True)]
    runs[0].start()
    wait_for(first_decode.is_set)
    # a newer stream's request arrives first, then an older stream's
    for values, started in (([20, 21, 22], now), ([10, 11, 12], now - 1.0)):
        runs.append(threading.Thread(target=pipeline.run, args=(values, decode, 60, started),
                                     daemon=True))
        runs[-1].start()
        wait_for(lambda n=len(runs): pipeline._to_decode.qsize() == 3 * (n - 1))
    release.set()
    for run in runs:
        run.join(60)
    assert computed == [0, 10, 11, 12, 20, 21, 22]


def test_a_streams_lead_over_newer_streams_is_bounded():
    from hybrid_infer.actor.batching import STREAM_LEAD_S, request_order

    # a new stream's rows go after an older stream's recent ones...
    assert request_order(0.0, 100.0) < request_order(97.0, 97.0)
    # ...but an old stream's request arriving more than STREAM_LEAD_S after a new
    # stream's start goes after it: a long task delays another by that much at most
    assert request_order(0.0, 97.0 + STREAM_LEAD_S + 1) > request_order(97.0, 97.0)
    assert request_order(5.0, 6.0) == 5.0  # within the lead: the stream's start
