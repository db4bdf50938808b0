"""User-facing errors.

A :class:`GilError` is a problem with the user's input (a path, a file, a params value). The CLI
prints its message as one line and exits with status 2, without a traceback. Messages name the
problem and the fix.
"""

from __future__ import annotations


class GilError(Exception):
    """An error caused by user input; its message is shown as is."""
