"""The one base class of the problems a user can fix; torch-free, so scripts can catch it before torch loads."""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's flags, data, weights, checkpoints or device: the scripts print its message
    as one line and exit with status 2, never a traceback. The message says what is wrong and how to fix it."""
