"""How a sweep uses the CPU: blocks of rows spread over worker threads, torch single-threaded.

torch parallelises each operation over its threads and waits for all of them at the end; on
a machine whose cores are also busy with other work, one descheduled thread holds up every
operation, and a sweep of a few thousand of them slowed 4-5x beside two CPU-bound processes.
Here each worker thread solves whole blocks of rows with one-threaded operations (the
products release the GIL), taking the next block when it is done: a slowed core simply
solves fewer blocks. A small problem runs on one thread.

``MFREC_THREADS`` sets the number of workers (default: the CPUs this process may use).
"""

from __future__ import annotations

import collections
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable

import torch

from mfrec.errors import ConfigError

ENV = "MFREC_THREADS"


def available_threads() -> int:
    """``MFREC_THREADS`` if set, else the CPUs this process may run on."""
    text = os.environ.get(ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{ENV} must be a whole number >= 1, got {text!r}")
        return int(text)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Workers:
    """Runs a function over blocks on ``n`` threads (in the caller when ``n`` is 1), results in
    block order, so sums over blocks come out the same whatever the timing."""

    def __init__(self, n: int):
        self.n = n
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="mfrec-block") if n > 1 else None

    def map(self, fn: Callable, items: Iterable) -> list:
        if self._pool is None:
            return [fn(*item) for item in items]
        # Autograd's mode is per thread: the workers take the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def call(item):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*item)

        # Items are taken as workers free up (at most two per worker, running or waiting), not
        # all at once as Executor.map does: a block holds its own temporaries (its widened
        # column indices: 100 MB for every block of 25M ratings at once).
        results, pending = [], collections.deque()
        try:
            for item in items:
                if len(pending) >= 2 * self.n:
                    results.append(pending.popleft().result())
                pending.append(self._pool.submit(call, item))
            while pending:
                results.append(pending.popleft().result())
        except BaseException:
            # Nothing more runs once one has failed: the rest would write into the model after
            # the caller has seen the error.
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


SERIAL = Workers(1)  # blocks one after another, in the caller


# Below this many ratings a fit runs on one thread: its operations take tens of microseconds,
# less than handing work to another thread costs (ml-latest-small: 9.6 ms a sweep on one
# thread, 11.3 ms on two).
SMALL_RATINGS = 1 << 19


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread for the duration, then as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(n_ratings: int):
    """torch on one thread for the duration when ``n_ratings`` is a small problem (its ranking
    and evaluation products take a few milliseconds, and on a busy machine one descheduled
    thread holds each of them up), else as it is."""
    return one_torch_thread() if n_ratings < SMALL_RATINGS else contextlib.nullcontext()


@contextlib.contextmanager
def workers_for(device: torch.device, n_ratings: int, distributed: bool = False):
    """Workers for a fit of ``n_ratings`` ratings on ``device``: on a CPU, one for a small fit
    and :func:`available_threads` otherwise, with torch one-threaded for the duration
    (restored after); a GPU or a sharded run (whose block results are all-reduced in one
    order on every rank) solves blocks one after another with torch's own threads."""
    if device.type != "cpu" or distributed:
        yield Workers(1)
        return
    with _one_threaded(available_threads() if n_ratings >= SMALL_RATINGS else 1) as workers:
        yield workers


@contextlib.contextmanager
def job_workers(n_jobs: int):
    """Workers for ``n_jobs`` independent jobs of CPU work: as many as torch has threads (and
    :func:`available_threads` allows), at most ``n_jobs``, with torch one-threaded for the
    duration (restored after); the caller, torch as it is, when that is one. Ranking takes
    this: its operations last a fraction of a millisecond, too short for torch's threads to
    share (at 25M ratings, two workers ranked every user 1.7x faster than torch's two threads).
    torch's thread count is the caller thread's and the process's default: one caller at a
    time (evaluation, batch, the search), never REST requests, which rank on their own."""
    n = n_jobs if n_jobs <= 1 else min(n_jobs, torch.get_num_threads(), available_threads())
    if n <= 1:  # (a REST request's ranking: nothing asked of the environment)
        yield SERIAL
        return
    with _one_threaded(n) as workers:
        yield workers


@contextlib.contextmanager
def _one_threaded(n: int):
    """``n`` workers, torch one-threaded while they exist (restored after)."""
    workers = Workers(n)
    try:
        with one_torch_thread():
            yield workers
    finally:
        workers.close()
