"""The project's own errors: what a user can cause, each with a message naming the file, line, id or key.

``rkd`` prints any :class:`RkdError` (and the standard ``FileNotFoundError`` / ``KeyError`` / ``ValueError`` the
library raises for bad input) as one line and exits with code 2; every other exception is a bug of the project
and keeps its traceback (exit code 3). Library code raises the most specific class below; each also derives from
the built-in exception a caller would expect (a format error is a ``ValueError``, a locked folder an ``OSError``),
so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = ["RkdError", "ConfigError", "IntegrityError", "FolderExistsError", "LockedError", "UnavailableError"]


class RkdError(Exception):
    """An error the user can fix: bad input, a wrong path, a conflicting run. The message says what to do."""


class ConfigError(RkdError, ValueError):
    """A config value or command-line parameter is invalid (the message names the file and key, or the flag)."""


class IntegrityError(RkdError, ValueError):
    """A file or folder does not match what it claims (checksum, row count, the corpus it was built on)."""


class FolderExistsError(RkdError, FileExistsError):
    """An output folder exists and retrieval-kd did not write it (or wrote another kind of folder there)."""


class LockedError(RkdError, OSError):
    """Another process is writing the same file or folder."""


class UnavailableError(RkdError, OSError):
    """A model, dataset or optional package cannot be had here (offline, not installed); the message names it."""
