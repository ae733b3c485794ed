"""Errors that come from the user's input, and how they reach the user.

Every error a user can cause (a bad param, a missing file, a stage run out of order) is a
:class:`DcmError`, whose message names the file or key, the value and the fix. The ``dcm`` CLI and
the stage scripts print such a message in one line and exit with :data:`EXIT_USER_ERROR`
(:func:`reporting_user_errors`); a traceback only with ``--verbose`` (or ``DCM_VERBOSE=1``, e.g. for the
stage scripts DVC runs). Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class DcmError(Exception):
    """An error in the user's input or in the order stages were run: its message says what to fix."""


class MissingInputError(DcmError, FileNotFoundError):
    """A file a stage reads is not there: the stage that writes it has not run (its message says which)."""


class SampleFolderError(DcmError, ValueError):
    """A sample folder whose manifest is empty, incomplete or names files that are not there."""


def verbose_from_env() -> bool:
    """``DCM_VERBOSE=1``: show tracebacks of user errors (DVC runs the stage scripts without flags)."""
    return os.environ.get("DCM_VERBOSE", "") not in ("", "0", "false", "False")


@contextlib.contextmanager
def reporting_user_errors(verbose: bool = False) -> Iterator[None]:
    """The one place input errors reach the user: a :class:`DcmError` raised in the block becomes one
    line on stderr and exit code 2; its traceback only when ``verbose`` or ``DCM_VERBOSE`` is set."""
    try:
        yield
    except DcmError as err:
        if verbose or verbose_from_env():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


class UsageError(DcmError, ValueError):
    """A command-line option or argument outside what the command accepts."""
