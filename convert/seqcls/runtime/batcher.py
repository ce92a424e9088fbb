"""Dynamic batching for the HTTP server: one worker thread owns the Scorer, requests queue their token ids.

Requests arrive already tokenised (every per-request option, instruction and truncation included, is
applied by ``Scorer.tokenize``), so any set of queued requests can share one engine call: the worker
takes what is queued (waiting at most ``window_s`` after the oldest arrival for company, and never
more than ``max_tokens`` tokens unless one request alone is larger), scores them together with
``Scorer.score_tokens`` (which also shares prompt prefixes across requests) and hands each request its
rows of logits.

A request alone in its batch is scored exactly as ``Scorer.score`` scores it (bit-identical); batched
with others, its fp32 logits may differ by rounding of the differently composed packs (~1e-7).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

log = logging.getLogger("seqcls.serve")


def batch_logits(scorer: Any, requests: list[list[list[int]]]) -> np.ndarray:
    """Logits [pairs, num_labels] of several requests' token ids in one ``score_tokens`` call."""
    flat = [seq for req in requests for seq in req]
    result = scorer.score_tokens(flat, raw=True)
    return np.asarray(result.logits, dtype=np.float64).reshape(len(flat), -1)


@dataclass
class _Job:
    seqs: list[list[int]]
    future: Future
    tokens: int
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters the server exports under /metrics."""

    batches: int = 0
    requests: int = 0
    pairs: int = 0
    tokens: int = 0
    busy_seconds: float = 0.0


class Batcher:
    """Queue + one worker thread that scores queued requests together.

    Args:
        run: ``run(list of requests' token-id lists) -> logits array`` (``batch_logits`` bound to a scorer).
        max_tokens: most tokens gathered into one engine call (a larger request runs alone).
        window_s: how long the worker may wait, after the oldest queued request arrived, for others to join.
        arriving: how many requests are on their way (admitted, not yet queued); the worker waits for
            company only while this is positive, so a lone client never pays the window.
    """

    def __init__(self, run: Callable[[list[list[list[int]]]], np.ndarray], max_tokens: int, window_s: float = 0.002,
                 arriving: Callable[[], int] | None = None):
        self._run = run
        self._arriving = arriving or (lambda: 1)
        self.max_tokens = max(1, int(max_tokens))
        self.window_s = max(0.0, float(window_s))
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    @property
    def depth(self) -> int:
        """Requests waiting for the engine (not counting the batch being scored)."""
        return len(self._queue)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="seqcls-batcher", daemon=True)
            self._thread.start()

    def submit(self, seqs: list[list[int]]) -> Future:
        """Queue one request's token ids; the future resolves to its logits rows."""
        job = _Job(seqs, Future(), sum(len(s) for s in seqs))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is shutting down")
            self._queue.append(job)
            self._queued_tokens += job.tokens
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued request, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- worker

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.window_s
            while self._queued_tokens < self.max_tokens and not self._stopping and self._arriving() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs = [self._queue.popleft()]
            used = jobs[0].tokens
            while self._queue and used + self._queue[0].tokens <= self.max_tokens:
                job = self._queue.popleft()
                used += job.tokens
                jobs.append(job)
            self._queued_tokens -= used
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if live:
                self._score(live)

    def _score(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            logits = self._run([j.seqs for j in jobs])
        except BaseException as exc:  # noqa: BLE001 - a failing batch must not kill the worker
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
            else:  # find out whose request fails; the others still get their scores
                for job in jobs:
                    self._score([job])
                return
        else:
            offset = 0
            for job in jobs:
                n = len(job.seqs)
                job.future.set_result(logits[offset:offset + n])
                offset += n
        stats = self.stats
        stats.batches += 1
        stats.requests += len(jobs)
        stats.pairs += sum(len(j.seqs) for j in jobs)
        stats.tokens += sum(j.tokens for j in jobs)
        stats.busy_seconds += time.perf_counter() - started
