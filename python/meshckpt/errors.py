"""meshckpt's exceptions: one class per kind of failure, each carrying the library's message
(what failed, where, why) and its code. Classes also derive from the matching built-in
exception, so `except ValueError` or `except FileNotFoundError` work as expected."""

import errno as _errno


class MeshckptError(Exception):
    """Base of every meshckpt error. `code` is the library's error code (0 for an OS error),
    `errno` the operating system's (0 for a library error)."""

    code = 0
    errno = 0

    @classmethod
    def _make(cls, message, code, err):
        if issubclass(cls, OSError):
            e = cls(err or _errno.ENOENT, message)
        else:
            e = cls(message)
        e.code = code
        e.errno = err
        e.message = message
        return e

    def __str__(self):
        return getattr(self, "message", None) or super().__str__()


class InvalidArgumentError(MeshckptError, ValueError):
    """A malformed argument: shape, layout, name, dtype, buffer."""


class MismatchError(MeshckptError, ValueError):
    """The saved tensor's dtype or shape differs from the live object's, or the saved slices do
    not cover a requested shard."""


class NotFoundError(MeshckptError, FileNotFoundError):
    """The checkpoint, a file it needs, or a tensor does not exist."""


class ChecksumMismatchError(MeshckptError):
    """Bytes on disk do not match their recorded checksum."""


class CorruptCheckpointError(MeshckptError):
    """A manifest or index is truncated, malformed, from an unknown version, or names an unsafe
    path; or a data file ends early."""


class CancelledError(MeshckptError):
    """The operation was stopped before it took effect (nothing was left behind)."""


class TimedOutError(MeshckptError, TimeoutError):
    """Another process did not answer in time."""


class LockedError(MeshckptError):
    """Another process writes into the checkpoint directory."""


class UnsupportedError(MeshckptError, NotImplementedError):
    """The request needs a capability this build or setup lacks."""


class OutOfMemoryError(MeshckptError, MemoryError):
    """An allocation failed; what the operation held was released."""


class MeshckptIOError(MeshckptError, OSError):
    """The operating system refused an IO call (`errno` says why)."""
