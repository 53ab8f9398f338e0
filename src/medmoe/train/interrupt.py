"""SIGTERM / Ctrl-C: finish the current step, write a checkpoint, then stop.

The first signal only raises a flag that the loop reads at the end of each step (all ranks agree on it
through the step's all-reduce, so every rank stops after the same step). A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a signal stopped the run and its checkpoint was written.

    Attributes:
        step: the last completed step.
        checkpoint: the checkpoint written on the way out (``None`` if none could be).
    """

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Context manager installing SIGTERM/SIGINT handlers that set ``requested`` (main thread only)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            logger.warning("%s received: stopping after this step and writing a checkpoint", name)
            if signum == signal.SIGINT:
                # A second Ctrl-C must still be able to break out of a hung step.
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
