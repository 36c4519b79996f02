"""Dynamic batching with fair turns: concurrent requests merged into token-budget batches for one inference worker.

A request submits its items (token-id lists, query-text pairs, ...), their token counts and a key; items merge
only with items of an equal key (same model options and prompt). Requests wait in line: a new request joins the
back, and so does a request whose batch has just come back, if it has items left. One background task builds each
batch from the request at the front: its next items, as many as fit `max_batch_tokens` (`batching.budget_groups`),
then, in line order, every same-key request behind it whose remaining items all fit the budget left. A request
behind the front is never split, so a big request's items run only in its own turns: with one big request in
flight, a one-text request waits for the batch running when it arrived and then runs in a batch of its own size
(with the other short requests that came meanwhile), not beside a budget-full share of the big one. A big request
alone runs in batches as full as the budget allows. While a batch is not full, the task waits up to `max_wait_ms`
after the front request arrived for more company.
The merged items run on a single worker thread, so inference never blocks the event loop; each request gets back
its own results, in its own order. Requests whose client went away are dropped before their next items run.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np

from ..batching import budget_groups
from .metrics import ModelMetrics

# run(key, items) -> one result per item, in order (a numpy array [n, d] or a list of length n)
RunBatch = Callable[[Hashable, list], Sequence]


@dataclass(eq=False)
class Request:
    key: Hashable  # items merge only with items of an equal key
    items: list
    lengths: list[int]  # tokens per item
    arrived: float  # event loop time
    turn: int  # its place in line: drawn at arrival, and again each time a batch of its items comes back
    future: asyncio.Future = field(repr=False)
    taken: int = 0  # items[:taken] went into batches
    results: list[Sequence] = field(default_factory=list, repr=False)  # what its batches gave back, in order

    @property
    def waiting_tokens(self) -> int:
        return sum(self.lengths[self.taken :])

    def deliver(self, results: Sequence) -> None:
        """The results of its next items; the whole answer once every item has one."""
        self.results.append(results)
        if sum(map(len, self.results)) == len(self.items):
            _resolve(self.future, result=_joined(self.results))


Share = tuple[Request, range]  # a request's items (by index) in one batch


class Batcher:
    def __init__(
        self, run: RunBatch, *, max_batch_tokens: int, max_wait_ms: float, batching: bool = True, metrics: ModelMetrics
    ) -> None:
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.batching = batching  # False: every batch holds one request's items only
        self.metrics = metrics
        self._waiting: list[Request] = []  # requests with items not yet in a batch, in arrival order
        self._turns = itertools.count()
        self._arrived = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker thread and the batching task (call from the running event loop)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gte-inference")
        self._task = asyncio.get_running_loop().create_task(self._serve_forever(), name="gte-batcher")

    async def stop(self) -> None:
        """Stop batching; requests still waiting fail, the batch in the worker (if any) is abandoned."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for request in self._waiting:
            _resolve(request.future, error=RuntimeError("the server is shutting down; retry on another replica"))
        self._waiting.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, key: Hashable, items: list, lengths: list[int]) -> Sequence:
        """Queue `items` (of `lengths` tokens each) and wait for their results, one per item, in order."""
        if not self.running:
            raise RuntimeError("the batcher is not running; start it inside the server's lifespan")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = Request(key, items, lengths, loop.time(), next(self._turns), loop.create_future())
        self._waiting.append(request)
        self.metrics.queue_depth.set(len(self._waiting))
        self._arrived.set()
        return await request.future

    async def _serve_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._execute(batch)
                for request, _ in batch:  # back of the line, behind the requests that came meanwhile
                    request.turn = next(self._turns)

    async def _next_batch(self) -> list[Share]:
        while not self._prune():
            self._arrived.clear()
            await self._arrived.wait()
        first = min(self._waiting, key=_turn)
        deadline = first.arrived + self.max_wait
        loop = asyncio.get_running_loop()
        while self.batching and not self._full(first.key) and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self._take(first.key)

    def _prune(self) -> list[Request]:
        """Drop the requests whose client went away (or that failed); the ones left wait."""
        self._waiting = [request for request in self._waiting if not request.future.done()]
        return self._waiting

    def _full(self, key: Hashable) -> bool:
        waiting = sum(request.waiting_tokens for request in self._waiting if request.key == key)
        return waiting >= self.max_batch_tokens

    def _take(self, key: Hashable) -> list[Share]:
        """Remove and return the next batch: the front request's next items of `key` within the budget, then every
        request behind it whose remaining items all fit what is left (batching off: the front request's only)."""
        line = sorted((request for request in self._prune() if request.key == key), key=_turn)
        if not line:  # the front request's client went away while it waited for company
            return []
        first, *behind = line
        size = len(next(budget_groups(first.lengths[first.taken :], self.max_batch_tokens)))
        batch = [(first, range(first.taken, first.taken + size))]
        used = sum(first.lengths[first.taken : first.taken + size])
        for request in behind if self.batching else []:
            if used + request.waiting_tokens <= self.max_batch_tokens:
                batch.append((request, range(request.taken, len(request.items))))
                used += request.waiting_tokens
        for request, share in batch:
            request.taken = share.stop
        self._waiting = [request for request in self._waiting if request.taken < len(request.items)]
        self.metrics.queue_depth.set(len(self._waiting))
        return batch

    async def _execute(self, batch: list[Share]) -> None:
        items = [request.items[i] for request, share in batch for i in share]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run, batch[0][0].key, items)
        except Exception as error:
            if len(batch) == 1:
                _resolve(batch[0][0].future, error=error)
            else:  # run each request's share alone, so one request's failure stays its own
                for share in batch:
                    await self._execute([share])
            return
        self._observe(batch, len(items))
        offset = 0
        for request, share in batch:
            request.deliver(results[offset : offset + len(share)])
            offset += len(share)

    def _observe(self, batch: list[Share], n_items: int) -> None:
        tokens = sum(request.lengths[i] for request, share in batch for i in share)
        self.metrics.batch_size.observe(n_items)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_tokens.observe(tokens)
        self.metrics.tokens.inc(tokens)
        self.metrics.inputs.inc(n_items)


def _turn(request: Request) -> int:
    return request.turn


def _joined(parts: list[Sequence]) -> Sequence:
    """Results given back in several batches, as one sequence."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [result for part in parts for result in part]


def _resolve(future: asyncio.Future, *, result: Sequence | None = None, error: Exception | None = None) -> None:
    if future.done():  # cancelled: the client went away while its batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
