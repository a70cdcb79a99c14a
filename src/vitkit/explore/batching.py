"""One worker thread runs the model; requests that arrive while it is busy share its next forward.

A lone request is run at once (no waiting for company); while a forward runs, the requests that
pile up are taken together, up to `max_batch`, in the order they came.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

import torch

Result = TypeVar("Result")
_STOP = object()
BATCHES_KEPT = 10_000


class ForwardBatcher(Generic[Result]):
    """`submit(x)` blocks until `run_batch(stack of the pending xs)` has given x's result.

    `run_batch` maps a (B, ...) batch to B results, one per input in order; an exception it
    raises goes to every request of that batch. `batch_sizes` holds the sizes of the last
    BATCHES_KEPT batches run, oldest first.
    """

    def __init__(self, run_batch: Callable[[torch.Tensor], Sequence[Result]], max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.batch_sizes: deque[int] = deque(maxlen=BATCHES_KEPT)
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()  # nothing is queued behind the stop mark
        self._worker = threading.Thread(target=self._work, name="vitkit-explore-forward", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Requests queued behind the forward in progress."""
        return self._pending.qsize()

    def submit(self, x: torch.Tensor) -> Result:
        future: Future = Future()
        with self._closing:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.put((x, future))
        return future.result()

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new requests; those already queued are answered first."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._pending.put(_STOP)
        self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            item = self._pending.get()
            if item is _STOP:
                break
            batch = [item]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run(batch)
            if stopping:
                break

    def _run(self, batch: list) -> None:
        futures = [future for _, future in batch]
        try:
            results = self._run_batch(torch.stack([x for x, _ in batch]))
            self.batch_sizes.append(len(batch))
        except Exception as e:  # noqa: BLE001 - handed to the requests, whose handlers report it
            for future in futures:
                future.set_exception(e)
            return
        for future, result in zip(futures, results):
            future.set_result(result)
