"""The one exception class for what a user can fix.

:class:`UsageError` covers bad flag or config values, a command that does not fit the kind of run it
is given, and missing or unreadable files. The ``attnkit`` command reports it in one line and exits
with code 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """Something the user can fix; the message names the value and what would fit."""
