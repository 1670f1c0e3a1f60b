"""The one exception tree of mountd.

Every error that can reach a FUSE caller is a `MountdError` with an errno; the FUSE shim maps
it in one place (`mountd.fuse.ops`). Backend failures become `RemoteError`s here, so no layer
above the backend ever sees an fsspec or SDK exception. Messages never contain secrets: they
name the remote by its configured name and its redacted URL only.
"""

from __future__ import annotations

import errno


class MountdError(Exception):
    """Base of all mountd errors; `errno` is what a FUSE caller receives."""

    errno: int = errno.EIO

    def __init__(self, message: str = "", *, errno_: int | None = None) -> None:
        super().__init__(message)
        if errno_ is not None:
            self.errno = errno_


class PosixError(MountdError):
    """A plain POSIX answer (ENOENT, EEXIST, ENOTEMPTY...) from the vfs."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)), errno_=errno_)


class ConfigError(MountdError):
    """The configuration is invalid; the message names the field and the fix."""

    errno = errno.EINVAL


class LaunchError(MountdError):
    """A daemon did not come up: the message is its own reason, or where its log is."""


class RemoteError(MountdError):
    """An object store failed. `remote` is the configured remote name."""

    errno = errno.EIO

    def __init__(self, remote: str, message: str) -> None:
        super().__init__(f"remote {remote!r}: {message}")
        self.remote = remote


class ObjectNotFound(RemoteError):
    errno = errno.ENOENT


class RemoteUnavailable(RemoteError):
    """Network failure, timeout, 5xx: retry later."""

    errno = errno.EIO


class RemoteDenied(RemoteError):
    """Credentials refused or missing permission: retrying will not help until config changes."""

    errno = errno.EACCES


class VersionMismatch(RemoteError):
    """A conditional write or delete found another version at the key than the one it expected
    (or an object where it expected none): another writer got there first."""

    errno = errno.ESTALE


class UploadCancelled(RemoteError):
    """An upload was stopped because its file changed or moved; the key is reconciled again."""

    errno = errno.EIO
