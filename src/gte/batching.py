"""The one token-budget rule: items, in the order given, cut into consecutive groups of at most `budget` tokens.

The library cuts its length-sorted inputs into batches with it (`embed.cut_batches`); the server's batcher
fills each batch from its waiting requests with it (`server.batcher`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def budget_groups(lengths: Iterable[int], budget: int) -> Iterator[range]:
    """Positions 0, 1, ... of `lengths` (tokens per item), in consecutive groups of at most `budget` tokens.

    A group closes at the first item that would take it over the budget; an item over the budget alone is a
    group of its own. Lazy: `lengths` is read only one item past the last group asked for.
    """
    start = stop = used = 0
    for n in lengths:
        if used + n > budget and stop > start:
            yield range(start, stop)
            start, used = stop, 0
        used += n
        stop += 1
    if stop > start:
        yield range(start, stop)
