"""`OpenUploads`: the multipart uploads a store has open, kept on disk so a restart resumes them.

A large file goes up in parts. When the daemon is killed, the machine reboots or the remote is
unreachable for longer than a request's deadline, the parts already stored stay on the server
under their upload id; what is lost is the upload id itself, held in memory, so the next attempt
sent every part again (and left the old upload open). Here each open upload is a small JSON
file in the local tier's `uploads/` directory, written when the upload is created: the key, the
upload id, the sha256 of the content, its size and the part size. The next upload of the same
key with the same content and part size continues it (the store lists the parts it holds and
sends only the rest); with other content the old upload is aborted first. The file goes when
the upload completes, is aborted, or its key is deleted.

Only the store (its worker thread, or the SDK's event loop thread) touches these files, one
upload per key at a time (the uploader runs one entry per key), so no lock is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenUpload:
    key: str
    upload_id: str
    sha256: str
    size: int
    part_size: int


class OpenUploads:
    def __init__(self, directory: Path, remote: str) -> None:
        self.directory = directory
        self.remote = remote

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(f"{self.remote}\0{key}".encode()).hexdigest()[:40] + ".json")

    def find(self, key: str) -> OpenUpload | None:
        """The open upload of `key` left by an earlier attempt, if any (an unreadable file: none)."""
        try:
            doc = json.loads(self._path(key).read_text())
            found = OpenUpload(**doc)
        except (OSError, ValueError, TypeError):
            return None
        return found if found.key == key else None

    def opened(self, upload: OpenUpload) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(upload.key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(upload)))
        os.replace(tmp, path)

    def closed(self, key: str) -> None:
        """The upload of `key` completed or was aborted."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("could not remove the open-upload file of %s: %s", key, e)
