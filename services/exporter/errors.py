"""Library errors of the exporter, each with a wire error code; service.py maps them.

Usage:
    raise ExportError("bad_request", "roles.target: missing; the rgbm output needs it")
"""

from __future__ import annotations

import errno

CODES = ("bad_request", "not_found", "overloaded", "internal")


class ExportError(Exception):
    """An error with a protocol error code and a message that names the field and the fix."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"code: {code!r} is not one of {CODES}")
        super().__init__(message)
        self.code = code
        self.message = message


def bad(message: str) -> ExportError:
    """A bad_request error (the caller can fix the request)."""
    return ExportError("bad_request", message)


def os_error(exc: OSError, what: str) -> ExportError:
    """Turn an OSError while writing `what` into a clear, actionable ExportError."""
    where = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ExportError(
            "internal",
            f"{what}: no space left on device or file too large ({where}); "
            "free space and call again - nothing incomplete was marked done",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(
            "bad_request",
            f"{what}: permission denied ({where}); choose a writable output "
            "directory or fix its permissions - nothing incomplete was marked done",
        )
    return ExportError("internal", f"{what}: {where}")
