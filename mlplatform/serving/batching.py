"""Micro-batching: concurrent requests are scored in one ``predict`` call per model version.

A pandas frame plus a scikit-learn pipeline costs about a millisecond per call whatever the row count, so 8
one-row requests scored together cost little more than one. No timer: the batcher task drains the queue after the
event loop has run every request that was ready, so the requests that arrived together (or while a batch was
being scored on the predict thread) become the next batch, a lone request waits for nothing and a busy service
batches by itself.

Small batches of models with numpy-only twins (``LoadedModel.inline_rows``: the flat trees, no OpenMP) are scored
on the event loop itself; everything else goes to the one predict thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlplatform.serving.models import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class _Job:
    model: LoadedModel
    rows: Sequence[Mapping[str, Any]]
    future: asyncio.Future


class MicroBatcher:
    """Queues (model, rows) jobs from the event loop and scores them on one predict thread, grouped by model."""

    def __init__(self, max_rows: int = 1000):
        self.max_rows = max_rows
        self._queue: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict", initializer=single_threaded)
        self.batches = 0
        self.inline_batches = 0
        self.jobs = 0
        self._busy = False

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish the queued jobs and the batch being scored, then stop."""
        while self._queue or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def predict(self, model: LoadedModel, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(model, rows, future))
        assert self._wakeup is not None, "MicroBatcher.start() was not called"
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                jobs = [self._queue.popleft()]
                rows = len(jobs[0].rows)
                while self._queue and rows + len(self._queue[0].rows) <= self.max_rows:
                    job = self._queue.popleft()
                    jobs.append(job)
                    rows += len(job.rows)
                self.batches += 1
                self.jobs += len(jobs)
                if rows <= min(job.model.inline_rows for job in jobs):
                    # Small batch of numpy-only twins: score here. Handing it to the predict thread cost more than
                    # the scoring (thread wake-ups and the two threads taking turns on the GIL: the p99).
                    self.inline_batches += 1
                    results = score_jobs(jobs)
                else:
                    self._busy = True
                    try:
                        results = await loop.run_in_executor(self._executor, score_jobs, jobs)
                    except Exception as error:  # noqa: BLE001 - score_jobs isolates failures; a last resort
                        results = [error] * len(jobs)
                    finally:
                        self._busy = False
                for job, result in zip(jobs, results, strict=True):
                    if job.future.done():  # the client went away
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)


def single_threaded() -> None:
    """Run this thread's OpenMP/BLAS work on one thread.

    HistGradientBoosting predicts with OpenMP over every core; for a request's few rows the threads' start and
    spin cost more than the work (measured: 60 ms of CPU instead of 10 for one row on a busy 2-core machine), and
    the HTTP side needs the other core. The limit is per calling thread for OpenMP, so it is set in the thread.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def score_jobs(jobs: Sequence[_Job]) -> list[list[dict[str, Any]] | BaseException]:
    """One predict per model version over all its jobs' rows; a failing group is retried job by job."""
    results: list[list[dict[str, Any]] | BaseException | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(id(job.model), []).append(index)
    for indexes in groups.values():
        model = jobs[indexes[0]].model
        try:
            outputs = model.predict([row for i in indexes for row in jobs[i].rows])
        except Exception:  # noqa: BLE001 - find the job that fails; the others still get their answer
            for i in indexes:
                try:
                    results[i] = model.predict(jobs[i].rows)
                except Exception as error:  # noqa: BLE001
                    results[i] = error
            continue
        start = 0
        for i in indexes:
            results[i] = outputs[start:start + len(jobs[i].rows)]
            start += len(jobs[i].rows)
    return results  # type: ignore[return-value]
