"""Ctrl-C during training: finish the batch, let callbacks save, then stop.

A KeyboardInterrupt raised in the middle of an optimizer step would leave some
parameters updated and others not, a state no checkpoint should hold. While a
`DeferredInterrupt` is active, the first SIGINT only sets ``requested``; the
training loop looks at it after each batch (and each epoch), where the state is
whole, and raises KeyboardInterrupt there once the callbacks have run (so
`SaveCheckpoint` can write a checkpoint that resumes exactly). A second SIGINT
raises at once, for a loop that is stuck.

    >>> import signal
    >>> with DeferredInterrupt() as interrupt:
    ...     signal.raise_signal(signal.SIGINT)  # Ctrl-C: no exception here...
    ...     print(interrupt.requested)
    ...     interrupt.requested = False  # ...the loop acts on it (else the exit raises)
    True
"""

from __future__ import annotations

import os
import signal
import threading

_NOT_INSTALLED = object()


class DeferredInterrupt:
    """A context manager that turns the first Ctrl-C into a request (``requested``).

    Signal handlers can only be set from the main thread; elsewhere (a training
    thread) Ctrl-C keeps its usual effect. On exit the previous handler comes
    back, and a request that no batch boundary has acted on is delivered then,
    as a KeyboardInterrupt: a Ctrl-C is never lost.
    """

    def __init__(self):
        self.requested = False
        self._previous = _NOT_INSTALLED

    def __enter__(self) -> DeferredInterrupt:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous is not _NOT_INSTALLED:
            # None: the previous handler was not set from Python; the default is the closest
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            self._previous = _NOT_INSTALLED
        pending, self.requested = self.requested, False
        if pending and exc_type is None:
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.requested = True
        # os.write, not print: a handler may run in the middle of another write to stderr
        os.write(2, b"\nsnugfit: stopping after this batch (Ctrl-C again to stop now)\n")
