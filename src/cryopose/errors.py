"""Errors that are the user's to fix (bad input, bad options).

The CLI prints their message as one line and exits with status 2; anything else is a bug
and keeps its traceback. Library code never names command-line options: a message ends
with what to do ("...; give the pixel size") and, where one setting fixes it, names that
setting in ``option`` (``"apix"``). The CLI then adds " with --apix" when the command has
such an option.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A problem with the user's input, with a message that says what to do.

    Args:
        message: one line: what is wrong and what to do.
        option: the setting that fixes it (a parameter name such as ``"apix"``), if one does.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def __reduce__(self):  # keep ``option`` when raised in a Dask worker and sent back
        return (type(self), (str(self), self.option))
