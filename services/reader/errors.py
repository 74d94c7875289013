"""Library errors of the replay-buffer reader; the service maps each class to a reply code.

Usage: ``except ReaderError as e: log.warning("%s: %s", e.code, e)``

Every message names what was wrong and how to fix it. The classes are ``ValueError``
subclasses so plain in-process callers can catch them without importing this module.
"""

from __future__ import annotations


class ReaderError(ValueError):
    """Base class; ``code`` is the protocol error code the service replies with."""

    code = "bad_request"


class DatasetNotFound(ReaderError):
    """The path (or dataset id) does not exist, or is outside the configured roots."""

    code = "not_found"


class NotAReplayBuffer(ReaderError):
    """The path is a zarr store (or not) but lacks the replay-buffer layout."""

    code = "bad_request"


class InvalidBuffer(ReaderError):
    """The replay buffer is inconsistent (lengths, episode_ends, chunk sizes)."""

    code = "bad_request"


class UnknownKey(ReaderError):
    """A key that is not an array under ``data/``."""

    code = "not_found"


class OutOfRange(ReaderError):
    """An episode index or a frame range outside the buffer."""

    code = "bad_request"


class CodecUnavailable(ReaderError):
    """A codec id the installed packages do not provide (names the package to install)."""

    code = "unsupported"


class TooLarge(ReaderError):
    """A reply would exceed max_chunk_bytes (names the setting or the op to use instead)."""

    code = "bad_request"
