"""Dynamic batching: concurrent requests merged into token-budget batches for one inference worker.

A request submits a job: a key, its items (token-id lists, query-text pairs, ...) and their token
count. One background task takes the oldest waiting job, adds later jobs with the same key in
arrival order while the batch stays within `max_batch_tokens`, and, while the batch is not full,
waits up to `max_wait_ms` after the oldest job arrived for more company. The merged items run on a
single worker thread, so inference never blocks the event loop; each job gets back its own slice
of the results, in its own order. Jobs whose client went away are dropped before they run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field

from .metrics import ModelMetrics

# run(key, items) -> one result per item, in order (a numpy array [n, d] or a list of length n)
RunBatch = Callable[[Hashable, list], Sequence]


@dataclass(eq=False)
class Job:
    key: Hashable  # jobs merge only with jobs of an equal key
    items: list
    tokens: int
    arrived: float  # event loop time
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self, run: RunBatch, *, max_batch_tokens: int, max_wait_ms: float, batching: bool = True, metrics: ModelMetrics
    ) -> None:
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.batching = batching  # False: every request is its own batch
        self.metrics = metrics
        self._pending: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker thread and the batching task (call from the running event loop)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gte-inference")
        self._task = asyncio.get_running_loop().create_task(self._serve_forever(), name="gte-batcher")

    async def stop(self) -> None:
        """Stop batching; jobs still waiting fail, the batch in the worker (if any) is abandoned."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down; retry on another replica"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, key: Hashable, items: list, tokens: int) -> Sequence:
        """Queue `items` (costing `tokens`) and wait for their results, one per item."""
        if not self.running:
            raise RuntimeError("the batcher is not running; start it inside the server's lifespan")
        loop = asyncio.get_running_loop()
        job = Job(key, items, tokens, loop.time(), loop.create_future())
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        self._arrived.set()
        return await job.future

    async def _serve_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._execute(batch)

    async def _next_batch(self) -> list[Job]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._pending[0]
        deadline = first.arrived + self.max_wait
        loop = asyncio.get_running_loop()
        while self.batching and not self._full(first.key) and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self._take(first.key)

    def _full(self, key: Hashable) -> bool:
        waiting = sum(job.tokens for job in self._pending if job.key == key)
        return waiting >= self.max_batch_tokens

    def _take(self, key: Hashable) -> list[Job]:
        """Remove and return the batch: same-key jobs in arrival order while they fit the budget."""
        taken: list[Job] = []
        kept: deque[Job] = deque()
        tokens, closed = 0, False
        for job in self._pending:
            if job.future.done():  # the client went away
                continue
            fits = not taken or (self.batching and tokens + job.tokens <= self.max_batch_tokens)
            if job.key == key and fits and not closed:
                taken.append(job)
                tokens += job.tokens
            else:
                closed = closed or job.key == key  # keep arrival order within a key
                kept.append(job)
        self._pending = kept
        self.metrics.queue_depth.set(len(kept))
        return taken

    async def _execute(self, batch: list[Job]) -> None:
        items = [item for job in batch for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run, batch[0].key, items)
        except Exception as error:
            if len(batch) == 1:
                _resolve(batch[0].future, error=error)
            else:  # run each request alone, so one request's failure stays its own
                for job in batch:
                    await self._execute([job])
            return
        self._observe(batch, len(items))
        offset = 0
        for job in batch:
            _resolve(job.future, result=results[offset : offset + len(job.items)])
            offset += len(job.items)

    def _observe(self, batch: list[Job], n_items: int) -> None:
        tokens = sum(job.tokens for job in batch)
        self.metrics.batch_size.observe(n_items)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_tokens.observe(tokens)
        self.metrics.tokens.inc(tokens)
        self.metrics.inputs.inc(n_items)


def _resolve(future: asyncio.Future, *, result: Sequence | None = None, error: Exception | None = None) -> None:
    if future.done():  # cancelled: the client went away while its batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
