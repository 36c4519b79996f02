"""The one token-budget rule the library's batches and the server's batcher share."""

from __future__ import annotations

import itertools

from gte.batching import budget_groups


def test_groups_are_consecutive_and_close_before_the_budget_is_passed():
    lengths = [5, 1, 9, 3, 3, 20, 2, 4]
    assert list(budget_groups(lengths, 10)) == [range(0, 2), range(2, 3), range(3, 5), range(5, 6), range(6, 8)]
    assert list(budget_groups(lengths, 100)) == [range(0, 8)]


def test_an_item_over_the_budget_is_a_group_of_its_own():
    assert list(budget_groups([3, 12, 3], 10)) == [range(0, 1), range(1, 2), range(2, 3)]
    assert list(budget_groups([1, 1], 0)) == [range(0, 1), range(1, 2)]


def test_no_items_no_groups():
    assert list(budget_groups([], 10)) == []


def test_lengths_are_read_lazily():
    assert next(budget_groups(itertools.repeat(3), 10)) == range(0, 3)  # an endless stream: one group asked for
