"""`UploadsSending`: the uploads whose bytes are on their way to a remote right now.

The journal tells it when a key is queued again (a rewrite, a rename, an unlink); an upload of
that key whose file no longer is what it was sending is then stopped where the store can stop
one, instead of sending bytes nobody will keep (s3fs's multipart uploads can be aborted between
parts). Whether the bytes are still wanted is decided by a test the reconciler registers with
each upload, so this module knows nothing of inodes or paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mountd.backend import ObjectStore

log = logging.getLogger(__name__)


class UploadsSending:
    def __init__(self) -> None:
        self._now: dict[tuple[str, str], tuple[ObjectStore, Callable[[], bool]]] = {}
        self.stopped = 0

    @contextmanager
    def sending(self, remote: str, key: str, store: ObjectStore,
                still_wanted: Callable[[], bool]) -> Iterator[None]:
        """While held, a re-queue of `key` stops this upload unless `still_wanted()`."""
        self._now[(remote, key)] = (store, still_wanted)
        try:
            yield
        finally:
            self._now.pop((remote, key), None)

    def key_queued(self, remote: str, key: str) -> None:
        """The journal was told `key` changed (called on the trio thread, inside the change's transaction)."""
        sending = self._now.get((remote, key))
        if sending is None:
            return
        store, still_wanted = sending
        if not still_wanted() and store.cancel_upload(key):
            self.stopped += 1
            log.info("upload of %s:%s stopped: the file changed or moved; it runs again", remote, key)
