"""User-facing errors: each carries a one-line message and the exit code it maps to.

The CLI prints `tadm: <message>` for these and never a traceback. Exit codes
(documented in the README): 0 all done, 1 some files of a batch failed,
2 usage or format error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class TadmError(Exception):
    """An error the user can act on; `str(err)` is a single line."""

    exit_code = EXIT_USAGE


class FormatError(TadmError):
    """A `.tadm` file (or an LR payload) is corrupt, truncated, forged or unsupported."""


class InputError(TadmError):
    """An input image cannot be used as given (unreadable, alpha without --flatten, too large...)."""


class ModelError(TadmError):
    """A model is unknown, unavailable here, or not the one a file was made with."""
