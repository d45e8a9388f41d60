"""The one base class of the problems a user can fix, and of the warnings a user reads; torch-free, so scripts
can catch them before torch loads."""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's flags, data, weights, checkpoints or device: the scripts print its message
    as one line and exit with status 2, never a traceback. The message says what is wrong and how to fix it."""


class DataError(UserError):
    """The data (a data set, an image, a scan) is not as MVFA expects; the message names the problem and the fix."""


class Notice(UserWarning):
    """Something the user should know about a run that goes on (a random draw instead of a missing seed list,
    skipped steps): `mvfa.runs.cli.run` prints it as a plain `warning: ...` line, without the source line that
    Python's warnings show, which would point the user at our code instead of at their data."""
