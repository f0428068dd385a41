"""Errors that are the user's to fix (bad input, bad options).

The CLI prints their message as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, with a message that says what to do."""
