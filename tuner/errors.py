"""Errors a user can fix. ``tuner.run`` prints them as one line and exits 2, with no traceback."""


class UserError(Exception):
    """Bad input (a space file, a flag, a data dir, a server address): the message says what and what to do."""
