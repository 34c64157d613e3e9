"""A search stopped from outside ends the way Ctrl-C ends it: Ray Tune's graceful interrupt.

Ctrl-C (SIGINT) and SIGTERM (``kill PID``, and what Ray Jobs' ``stop_job`` sends a job's driver) both end
the search loop, Tune saves the experiment's state one last time, and the driver closes its MLflow runs as
KILLED instead of concluding: ``--resume`` continues the search (unfinished trials from their last
checkpoint). A second signal stops at once.

Tune catches SIGINT itself only, and only while ``fit`` runs; ``ray.init`` makes SIGTERM a plain
``sys.exit``. So Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) and both
signals come here: while ``fit`` runs this calls the handler Tune always installs on SIGUSR1 (the same
graceful stop), before and after it raises KeyboardInterrupt as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """While entered (in the main thread, after ``ray.init``), SIGINT and SIGTERM request a stop;
    ``requested`` says whether one came."""

    def __init__(self):
        self.requested = False
        self._searching = False
        self._old: dict = {}
        self._old_env: str | None = None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self          # signals reach the main thread only: leave them as they are
        self._old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._old:
            if self._old_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._old_env
        self._old = {}

    @contextlib.contextmanager
    def searching(self):
        """Around ``Tuner.fit``: a signal then ends the search loop gracefully."""
        self._searching = True
        try:
            yield
        finally:
            self._searching = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt              # a second signal: stop now
        self.requested = True
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if self._searching and callable(tune_stop):
            tune_stop(signum, frame)             # Tune's graceful interrupt, installed by fit
        else:
            raise KeyboardInterrupt
