"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations


class DiffusaError(Exception):
    """A user-facing error: a bad path, flag, config, file or shape.

    The CLI prints its message on one line and exits non-zero; bugs raise other types.
    """
