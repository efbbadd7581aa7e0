"""The stop of a training run on SIGTERM or Ctrl-C: noted by a signal handler, acted on by the
engine between steps, agreed among torchrun's processes."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch

from sftkd_cli.errors import RunInterrupted


#: what a stop says it waits for, by what the engine is doing when it comes (`StopFlag.waiting`)
AFTER_STEP = "stopping after this step, then saving (Ctrl-C again stops at once)"
AFTER_VALIDATION = "stopping after this validation, then saving (Ctrl-C again stops at once)"
#: after an epoch's validation its checkpoint is the save: a second Ctrl-C stops without it
AT_CHECKPOINT = "stopping once this epoch's checkpoint is written (Ctrl-C again stops at once, without it)"
AT_LAST_CHECKPOINT = "the run is complete once its last checkpoint is written (Ctrl-C again stops at once, without it)"


class StopFlag:
    """Set by SIGTERM or Ctrl-C (SIGINT) while training; checked between steps and after each
    epoch, so that the engine saves exactly where it is and leaves cleanly. A stop at an
    arbitrary moment could save an optimiser step half applied (CPU Adam updates the tensors
    one by one). A second Ctrl-C stops at once (KeyboardInterrupt): the last checkpoint stays;
    a repeated SIGTERM (a supervisor signalling a process group twice) only asks again.
    Under torchrun the processes stop together (`agreed`) and rank 0 alone says so (`announce`)."""

    def __init__(self, announce: bool = True, live_bar: bool = False) -> None:
        """`announce`: this process prints the stop (rank 0); `live_bar`: a progress bar is drawn
        on a terminal (the message then starts on a new line)."""
        self.raised = False
        self.by = ""  # what set it, for the message
        self.signum = int(signal.SIGINT)
        self.announce, self.live_bar = announce, live_bar
        self.waiting = AFTER_STEP  # what the stop says it waits for: what the engine does now

    def __call__(self, signum: int, frame: Any) -> None:
        if self.raised:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._set(signum)
        if not self.announce:
            return
        # os.write, not print: a handler can run in the middle of the progress bar's own writes;
        # a live bar's line is ended first, and without a bar there is no line to end
        start = "\n" if self.live_bar else ""
        os.write(2, f"{start}{self.by}: {self.waiting}\n".encode())

    def _set(self, signum: int) -> None:
        self.raised, self.by = True, "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.signum = int(signum)

    def agreed(self, device: torch.device) -> bool:
        """Whether any of the processes was signalled; all of them call it at the same step (a
        collective: the flags' maximum signal number, read by the host). One that was not takes
        the signal from one that was, for its exit code."""
        import torch.distributed as dist

        flag = torch.tensor([self.signum if self.raised else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if signum and not self.raised:
            self._set(signum)
        return bool(signum)

    def stopped(self, message: str) -> RunInterrupted:
        """The stop as an error, exiting as shells report a death by the signal: 130 after Ctrl-C,
        143 after SIGTERM (so a scheduler that sent SIGTERM sees it). Quiet unless `announce`."""
        error = RunInterrupted(message, self.signum)
        error.quiet = not self.announce
        return error
