"""Group the images of concurrent requests into batches for one model call each.

Every request puts its images into one queue. A single batcher task takes up to
``max_batch_size`` images from it. When fewer are queued, it waits at most
``batch_timeout`` seconds for more. It waits only while more images are likely: when the
server is receiving other requests, or when the previous batch held several images and
ended less than ``batch_timeout`` ago, since clients of that batch tend to send their
next request at once. So a lone request runs at once, and a full batch never waits.

The batcher runs the model on the batch in a worker thread, so the event loop keeps
receiving requests meanwhile, and hands each image's row of results back to the request
that sent it. Images of one request may span several batches, and one batch may contain
images of many requests.

A model call can fail with :class:`BadImageError`, raised for an image that passed the
header checks but that the graph cannot decode. The batch is then retried one image at a
time, so only the request with the bad image fails. The other requests of the batch get
their results.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

PredictFunction = Callable[[list[bytes]], np.ndarray]
ArrivingFunction = Callable[[], int]  # requests being received that have not queued images
BatchObserver = Callable[[int, float], None]  # (images in the batch, seconds of the model call)


class BadImageError(Exception):
    """An image that the model's graph failed to decode; ``index`` is its place in the request."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class QueueFullError(Exception):
    """The queue cannot take a request's images without exceeding ``max_queue_images``."""


@dataclass
class _Item:
    image: bytes
    future: asyncio.Future[np.ndarray]


class Batcher:
    """The queue of images waiting for the model, and the task that empties it in batches.

    Args:
        predict: called in ``executor`` with a list of N encoded images. It returns an array
            of N rows, or raises BadImageError when the graph cannot decode one of them.
        max_batch_size: the maximum number of images in one call of ``predict``; 1 disables
            batching.
        batch_timeout: seconds to wait for a batch to fill once its first image is queued.
        max_queue_images: the maximum number of queued images. :meth:`predict` raises
            QueueFullError beyond it, so a burst cannot take all memory.
        executor: runs ``predict``. One worker thread keeps model calls one at a time.
        observe: called after every model call with the batch size and its seconds.
        arriving: returns how many requests the server is receiving that have not queued
            their images yet; see the module docstring for how it shortens the wait. None
            waits for the timeout every time.
    """

    def __init__(
        self,
        predict: PredictFunction,
        *,
        max_batch_size: int,
        batch_timeout: float,
        max_queue_images: int,
        executor: Executor,
        observe: BatchObserver | None = None,
        arriving: ArrivingFunction | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_images < max_batch_size or batch_timeout < 0:
            raise ValueError(
                "Expected max_batch_size >= 1, max_queue_images >= max_batch_size and "
                f"batch_timeout >= 0. Received: max_batch_size={max_batch_size}, "
                f"max_queue_images={max_queue_images}, batch_timeout={batch_timeout}"
            )
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.max_queue_images = max_queue_images
        self._executor = executor
        self._observe = observe
        self._arriving = arriving
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[_Item] = []  # the batch in the model now
        self._previous_size = 0  # images in the previous batch
        self._previous_end = -float("inf")  # event loop time when it ended

    @property
    def queued(self) -> int:
        """Return the number of images waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batcher task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Cancel the batcher task and fail the images still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        stopped = RuntimeError("the server stopped before this image ran")
        for item in [*self._running, *self._queue]:
            _set_exception(item, stopped)
        self._queue.clear()

    async def predict(self, images: Sequence[bytes]) -> list[np.ndarray]:
        """Queue ``images`` and return their rows of results, in order.

        Raises:
            QueueFullError: the queue would exceed ``max_queue_images`` with these.
            BadImageError: the graph failed to decode one of ``images``; its ``index`` is
                the first such image. The other images still ran.
        """
        if len(self._queue) + len(images) > self.max_queue_images:
            raise QueueFullError(
                f"{len(self._queue)} images are waiting for the model and this request adds "
                f"{len(images)}, above the limit of {self.max_queue_images} "
                "(--max-queue-images); retry in a moment"
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self._queue.extend(_Item(image, future) for image, future in zip(images, futures))
        self._arrived.set()

        results = await asyncio.gather(*futures, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, BadImageError):
                raise BadImageError(result.message, index)
            if isinstance(result, BaseException):
                raise result
        return results

    async def _run(self) -> None:
        while True:
            self._running = await self._next_batch()
            if self._running:
                await self._run_batch(self._running)
                self._previous_size = len(self._running)
                self._previous_end = asyncio.get_running_loop().time()
            self._running = []

    async def _next_batch(self) -> list[_Item]:
        """Wait for a first image, then for a full batch or the timeout, and take the batch.

        The wait ends early when :meth:`_more_expected` returns False.
        """
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_timeout
        while len(self._queue) < self.max_batch_size:
            if not self._more_expected():
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break

        size = min(self.max_batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(size)]
        # A request cancelled while it waited has cancelled its futures: skip its images.
        return [item for item in batch if not item.future.done()]

    def _more_expected(self) -> bool:
        """Return True while more images are likely to arrive within the batch timeout."""
        if self._arriving is None or self._arriving() > 0:
            return True
        since_previous = asyncio.get_running_loop().time() - self._previous_end
        return self._previous_size > 1 and since_previous < self.batch_timeout

    async def _run_batch(self, batch: list[_Item]) -> None:
        try:
            rows = await self._call([item.image for item in batch])
        except BadImageError as error:
            if len(batch) == 1:
                _set_exception(batch[0], error)
                return
            logger.warning(
                "a batch of %d images failed to decode (%s); retrying one image at a time",
                len(batch),
                error.message,
            )
            for item in batch:
                await self._run_batch([item])
            return
        except Exception as error:  # a model failure that is no input's fault
            logger.exception("the model failed on a batch of %d images", len(batch))
            for item in batch:
                _set_exception(item, error)
            return

        for item, row in zip(batch, rows):
            if not item.future.done():
                item.future.set_result(row)

    async def _call(self, images: list[bytes]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            return await loop.run_in_executor(self._executor, self._predict, images)
        finally:
            if self._observe is not None:
                self._observe(len(images), time.perf_counter() - start)


def _set_exception(item: _Item, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)
