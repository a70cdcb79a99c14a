"""ForwardBatcher: a lone request runs at once; requests that pile up share the next forward."""

import threading

import pytest
import torch

from vitkit.explore.batching import ForwardBatcher

from .conftest import wait_until


class HeldForward:
    """Doubles its batch; the first call waits for `release`. Records each batch it ran."""

    def __init__(self):
        self.release, self.entered = threading.Event(), threading.Event()
        self.batches = []

    def __call__(self, x):
        self.entered.set()
        assert self.release.wait(60)
        self.batches.append(x.clone())
        return list(2 * x)


def _submit_all(batcher, values):
    results = {}

    def submit(v):
        results[v] = batcher.submit(torch.tensor([float(v)]))

    threads = [threading.Thread(target=submit, args=(v,)) for v in values]
    return results, threads


def _pile_up(count, max_batch):
    """`count` requests, the first held in its forward until the others are queued behind it in
    order; returns the (closed) batcher, the forward and each request's result."""
    forward = HeldForward()
    batcher = ForwardBatcher(forward, max_batch=max_batch)
    results, threads = _submit_all(batcher, range(count))
    threads[0].start()
    assert forward.entered.wait(60)
    for queued, t in enumerate(threads[1:], start=1):
        t.start()
        wait_until(lambda n=queued: batcher.waiting == n)
    forward.release.set()
    for t in threads:
        t.join(60)
    batcher.close()
    return batcher, forward, {v: r.item() for v, r in results.items()}


def test_a_lone_request_runs_at_once_and_piled_up_ones_run_together_in_order():
    batcher, forward, results = _pile_up(5, max_batch=8)
    assert list(batcher.batch_sizes) == [1, 4]
    assert forward.batches[1].flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert results == {v: 2.0 * v for v in range(5)}


def test_a_batch_takes_at_most_max_batch_requests():
    batcher, forward, results = _pile_up(6, max_batch=2)
    assert list(batcher.batch_sizes) == [1, 2, 2, 1]
    assert [b.flatten().tolist() for b in forward.batches] == [[0.0], [1.0, 2.0], [3.0, 4.0], [5.0]]
    assert results == {v: 2.0 * v for v in range(6)}


def test_an_error_in_a_forward_reaches_each_request_of_that_batch_and_the_next_batch_runs():
    calls = []

    def forward(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return list(x)

    batcher = ForwardBatcher(forward)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit(torch.zeros(1))
    assert batcher.submit(torch.ones(1)).item() == 1.0
    batcher.close()
    assert list(batcher.batch_sizes) == [1]  # the failed batch is not counted


def test_after_close_new_requests_are_refused_and_queued_ones_are_still_answered():
    forward = HeldForward()
    batcher = ForwardBatcher(forward)
    results, threads = _submit_all(batcher, range(2))
    threads[0].start()
    assert forward.entered.wait(60)
    threads[1].start()
    wait_until(lambda: batcher.waiting == 1)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    wait_until(lambda: batcher.waiting == 2)  # the stop mark queues behind the waiting request
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(torch.zeros(1))
    forward.release.set()
    for t in [*threads, closing]:
        t.join(60)
    assert {v: r.item() for v, r in results.items()} == {0: 0.0, 1: 2.0}
    assert list(batcher.batch_sizes) == [1, 1]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ForwardBatcher(list, max_batch=0)
