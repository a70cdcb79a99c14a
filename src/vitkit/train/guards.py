"""What stops a run early, and only ever right after an optimiser update: a stop signal
(SIGTERM from a scheduler, Ctrl-C), and NaN or infinite losses and weights
(docs/reliability.md)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import torch

from vitkit.train.distributed import Distributed

# With --skip-nonfinite, this many skipped updates in a row stop the run: an odd bad batch is
# skipped, but a run whose every batch overflows is no longer training.
MAX_SKIPPED_IN_A_ROW = 10


class StopSignals:
    """While training, SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C) ask the
    run to stop after the current optimiser update, with a checkpoint. The first signal puts
    the previous handlers back, so a second one acts as usual (ends the process, or
    KeyboardInterrupt). Under torchrun a signal can reach the processes at different updates
    (or only one of them): they agree in `requested`, so that all stop after the same update."""

    def __init__(self, dist: Distributed):
        self.dist = dist
        self.signal: int | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)

        def ask_to_stop(signum, frame) -> None:
            self.signal = signum
            restore()

        for s in previous:
            signal.signal(s, ask_to_stop)
        try:
            yield
        finally:
            restore()

    def requested(self) -> bool:
        if self.dist.active:
            self.signal = self.dist.max_over_ranks(self.signal or 0) or None
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name


class NonFiniteLoss(Exception):
    """A step's loss was NaN or infinite and may not be skipped (the Trainer says where)."""

    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


class NonFiniteWatch:
    """Whether a step's loss may be back-propagated. A per-step finiteness check costs nothing
    on the CPU and is needed to skip steps; on a GPU it would wait for every step, so there the
    first bad step is recorded on the device and read at the next checkpoint or epoch end
    (`first_bad`). Under torchrun the processes decide together at every step (one summed loss),
    so that none goes on while another stops or skips."""

    def __init__(self, dist: Distributed, device: torch.device, skip: bool):
        self.dist, self.skip = dist, skip
        self.each_step = device.type == "cpu" or skip or dist.active
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_bad_loss = torch.zeros((), device=device)

    def usable(self, loss: torch.Tensor, global_step: int) -> bool:
        """True to back-propagate, False to skip the step (--skip-nonfinite); a non-finite loss
        that may not be skipped raises NonFiniteLoss. `global_step` counts steps from the start
        of training."""
        if not self.each_step:
            bad = ~torch.isfinite(loss.detach())
            first = bad & (self.first_bad_step < 0)
            self.first_bad_step = torch.where(first, global_step, self.first_bad_step)
            self.first_bad_loss = torch.where(first, loss.detach().float(), self.first_bad_loss)
            return True
        total = self.dist.sum_over_ranks(loss.detach())
        if bool(torch.isfinite(total)):
            return True
        if self.skip:
            return False
        raise NonFiniteLoss(float(total))

    def first_bad(self) -> tuple[int, float] | None:
        """(global step, loss) of the first non-finite loss recorded on the device, or None."""
        step = int(self.first_bad_step)
        return None if step < 0 else (step, float(self.first_bad_loss))

    def all_finite(self, tensors: list[torch.Tensor]) -> bool:
        return self.dist.all_finite(tensors)
