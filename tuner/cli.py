"""What the commands share: the help formatter."""

import argparse


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where the help says the default in words (None), a flag is off, or a
    repeatable option starts empty."""

    def _get_help_string(self, action):
        quiet = action.default is None or action.default is False or action.default == []
        return action.help if quiet else super()._get_help_string(action)
