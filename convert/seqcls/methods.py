"""Conversion methods: pure functions from answer-token rows of the LM head to score-head rows.

Each takes a float32 array (numpy or torch) of shape ``[len(tokens), hidden]`` in the recipe's token
order and returns the score weight ``[num_labels, hidden]``.
"""

from __future__ import annotations

from typing import Any, Callable


def from_2_way_softmax(rows: Any) -> Any:
    """``W[true] - W[false]``: sigmoid of the score equals softmax([l_false, l_true])[1]."""
    return rows[1:2] - rows[0:1]


def no_post_processing(rows: Any) -> Any:
    """The answer-token rows themselves: one logit per token."""
    return rows[:]


METHODS: dict[str, Callable[[Any], Any]] = {
    "from_2_way_softmax": from_2_way_softmax,
    "no_post_processing": no_post_processing,
}


def num_labels(method: str, n_tokens: int) -> int:
    return 1 if method == "from_2_way_softmax" else n_tokens
