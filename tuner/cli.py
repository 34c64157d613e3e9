"""What the commands share: the help formatter, and how a command ends on a user's mistake."""

import argparse
import atexit
import gc
import sys
from typing import Callable

from tuner.errors import UserError


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where the help says the default in words (None), a flag is off, or a
    repeatable option starts empty."""

    def _get_help_string(self, action):
        quiet = action.default is None or action.default is False or action.default == []
        return action.help if quiet else super()._get_help_string(action)


def exit_code(action: Callable[[], int], on_interrupt: str) -> int:
    """Run a command's body: a UserError is one line on stderr and status 2, Ctrl-C a hint and 130."""
    try:
        return action()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{on_interrupt}", file=sys.stderr)
        return 130


def skip_final_collection() -> None:
    """At exit Python's last garbage collections walk every object torch, Ray and MLflow made (about 3 s
    on two cores after a search); freezing them first skips that walk. Exit handlers (Ray's, MLflow's)
    still run and objects are still freed as their references go; only collecting reference cycles is left
    to the operating system."""
    atexit.unregister(gc.freeze)   # once, however often the command runs in one process
    atexit.register(gc.freeze)
