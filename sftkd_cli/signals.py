"""Signal handlers installed for a block of work (torch-free: `prepare-data` uses it too)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Interrupts:
    """A handler that raises KeyboardInterrupt on Ctrl-C or SIGTERM and remembers that one came
    (`pressed`: Python drops an exception raised inside a finalizer, so a loop can look again) and
    which (`signum`; SIGINT until then, as Python's own Ctrl-C handler raises the same)."""

    def __init__(self) -> None:
        self.signum, self.pressed = int(signal.SIGINT), False

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum, self.pressed = int(signum), True
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts() -> Iterator[Interrupts]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the block (work that keeps what it did on
    either); the handler yielded says which signal it was, for the exit code."""
    handler = Interrupts()
    with on_signals(handler, signal.SIGINT, signal.SIGTERM):
        yield handler


@contextlib.contextmanager
def on_signals(handler: Callable[[int, Any], Any], *signums: int) -> Iterator[None]:
    """`handler` called by the signals `signums` for the block, then the previous handlers are
    back (SIG_DFL for one set outside Python, which Python cannot put back). Only the main thread
    can install handlers: elsewhere the block runs with them as they were. A signal this process
    ignores stays ignored: whoever started it so (SIGINT in a background job, `cmd &` in a
    script; a plan's worker) asked for that."""
    main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, handler) for signum in signums
                if main and signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler_before is None else handler_before)
