"""Tests of ``deploy.batching.Batcher`` with a stand-in model function.

The stand-in records every batch it gets, so each test can check how images were grouped.
The batcher, its queue, its worker thread and the event loop are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deploy.batching import BadImageError, Batcher, QueueFullError


class RecordingModel:
    """Record each batch and return every image's length as its row of results."""

    def __init__(self, bad_image: bytes | None = None) -> None:
        self.batches: list[list[bytes]] = []
        self.bad_image = bad_image

    def __call__(self, images: list[bytes]) -> np.ndarray:
        self.batches.append(list(images))
        if self.bad_image is not None and self.bad_image in images:
            raise BadImageError("Invalid PNG data")
        return np.array([[len(image)] for image in images], dtype=np.float32)


class Arrivals:
    """The number of requests being received, as the server would report it."""

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def __call__(self) -> int:
        return self.count


async def started(model, arriving, *, max_batch_size=8, timeout=10.0, max_queue=64) -> Batcher:
    batcher = Batcher(
        model,
        max_batch_size=max_batch_size,
        batch_timeout=timeout,
        max_queue_images=max_queue,
        executor=ThreadPoolExecutor(max_workers=1),
        arriving=arriving,
    )
    batcher.start()
    return batcher


async def until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not become true in time")


def test_lone_request_runs_without_waiting():
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(0), timeout=10.0)
        start = time.perf_counter()
        rows = await batcher.predict([b"abc"])
        seconds = time.perf_counter() - start
        await batcher.stop()
        return rows, seconds

    rows, seconds = asyncio.run(scenario())

    assert [row.tolist() for row in rows] == [[3.0]]
    assert seconds < 5.0  # the 10 s timeout did not apply
    assert model.batches == [[b"abc"]]


def test_batch_waits_while_requests_arrive():
    model = RecordingModel()
    arrivals = Arrivals(1)

    async def scenario():
        batcher = await started(model, arrivals, timeout=10.0)
        first = asyncio.ensure_future(batcher.predict([b"a"]))
        await asyncio.sleep(0.2)
        waited = list(model.batches)
        arrivals.count = 0  # the arriving request queues its image now
        second = await batcher.predict([b"bb"])
        await batcher.stop()
        return waited, await first, second

    waited, first, second = asyncio.run(scenario())

    assert waited == []
    assert model.batches == [[b"a", b"bb"]]
    assert first[0].tolist() == [1.0]
    assert second[0].tolist() == [2.0]


def test_timeout_bounds_the_wait():
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(1), timeout=0.3)
        start = time.perf_counter()
        await batcher.predict([b"a"])
        seconds = time.perf_counter() - start
        await batcher.stop()
        return seconds

    seconds = asyncio.run(scenario())

    assert 0.3 <= seconds < 5.0
    assert model.batches == [[b"a"]]


def test_full_batch_does_not_wait():
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(5), max_batch_size=2, timeout=10.0)
        start = time.perf_counter()
        await batcher.predict([b"a", b"b", b"c", b"d"])
        seconds = time.perf_counter() - start
        await batcher.stop()
        return seconds

    seconds = asyncio.run(scenario())

    assert seconds < 5.0
    assert model.batches == [[b"a", b"b"], [b"c", b"d"]]


def test_recent_batch_of_several_waits_for_more():
    # Clients of a batch of several images send again at once, so the next batch waits.
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(0), timeout=1.0)
        await batcher.predict([b"a", b"b"])
        third = asyncio.ensure_future(batcher.predict([b"c"]))
        await asyncio.sleep(0.1)
        await batcher.predict([b"d"])
        await third
        await batcher.stop()

    asyncio.run(scenario())

    assert model.batches == [[b"a", b"b"], [b"c", b"d"]]


def test_bad_image_fails_only_its_request():
    model = RecordingModel(bad_image=b"bad")
    arrivals = Arrivals(3)

    async def scenario():
        batcher = await started(model, arrivals, timeout=10.0)
        requests = []
        for images in ([b"good"], [b"bad"], [b"fine", b"ok"]):
            arrivals.count -= 1
            requests.append(asyncio.ensure_future(batcher.predict(images)))
            await asyncio.sleep(0)
        results = await asyncio.gather(*requests, return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, fine = asyncio.run(scenario())

    assert model.batches == [
        [b"good", b"bad", b"fine", b"ok"],
        [b"good"],
        [b"bad"],
        [b"fine"],
        [b"ok"],
    ]
    assert [row.tolist() for row in good] == [[4.0]]
    assert isinstance(bad, BadImageError)
    assert bad.index == 0
    assert bad.message == "Invalid PNG data"
    assert [row.tolist() for row in fine] == [[4.0], [2.0]]


def test_bad_image_index_within_request():
    model = RecordingModel(bad_image=b"bad")

    async def scenario():
        batcher = await started(model, Arrivals(0))
        try:
            await batcher.predict([b"good", b"bad"])
        finally:
            await batcher.stop()

    with pytest.raises(BadImageError) as raised:
        asyncio.run(scenario())

    assert raised.value.index == 1


def test_full_queue_raises_before_queueing():
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(0), max_batch_size=2, max_queue=2)
        try:
            await batcher.predict([b"a", b"b", b"c"])
        finally:
            await batcher.stop()

    with pytest.raises(QueueFullError, match=r"above the limit of 2 \(--max-queue-images\)"):
        asyncio.run(scenario())

    assert model.batches == []


def test_stop_fails_queued_images():
    model = RecordingModel()

    async def scenario():
        batcher = await started(model, Arrivals(1), timeout=10.0)
        waiting = asyncio.ensure_future(batcher.predict([b"a"]))
        await until(lambda: batcher.queued == 1)
        await batcher.stop()
        return await asyncio.gather(waiting, return_exceptions=True)

    (result,) = asyncio.run(scenario())

    assert isinstance(result, RuntimeError)
    assert "stopped before this image ran" in str(result)
    assert model.batches == []


def test_invalid_settings_rejected():
    with pytest.raises(ValueError, match="max_queue_images >= max_batch_size"):
        Batcher(
            RecordingModel(),
            max_batch_size=8,
            batch_timeout=0.0,
            max_queue_images=4,
            executor=ThreadPoolExecutor(max_workers=1),
        )
