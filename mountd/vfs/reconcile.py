"""`Reconciler`: makes one object key of a remote match the local view.

A journal entry says only "key K of remote R may differ from what the mount shows". This
module looks at what the namespace holds at K now and does the one remote operation needed:
upload the local file (or, when the content hash is already known in the remote, skip it or
copy server-side), copy an object that was renamed, re-put a marker, symlink or metadata,
or delete an object nothing maps to any more. Network work and hashing run in worker threads;
results are written back only if the inode did not change meanwhile (else it runs again). It
sees the namespace only through `WritebackView`, and calls remotes only through `RemoteCalls`.

## Per-key reservations (read before changing an await in this module)

The uploader runs at most one entry per (remote, key) at a time, but entries of *different*
keys touch each other's objects: a rename copies from the old key, dedup copies from any key
holding the same bytes, and an overwrite destroys what was at its key. These in-memory
reservations keep that safe; none is held across a crash (each entry is simply run again):

- `_writing[(remote, key)]`: `key` is about to be overwritten (held by `_overwriting` for the
  whole upload/copy to it). Copies *from* `key` wait for it to be released (`_wait_keys`).
- `_copying_from[(remote, key)]` (a count): server-side copies read from `key` now (held by
  `_reading_from` from the HEAD that chose the source to the end of the copy). An overwrite of
  `key` waits until the count is zero before taking `_writing`.
- `_uploading[(remote, sha256)]`: bytes with this hash are being sent now; a second upload of
  identical content waits for that event, then copies server-side instead of sending again.
- `UploadsSending`: which upload is sending which key, so a re-queue of the key stops it.

Order: `_copying_from` must be zero before `_writing` is taken; `_writing` is taken before the
evacuation copies (which read from the key being overwritten, as its owner: `own_key`). Every
wait on another key's reservation ends after `KEY_WAIT` seconds with `Retry` (the entry runs
again 0.2 s later), so two entries that wait on each other cannot hang: one gives way.

## Compare-and-swap (many hosts on one bucket)

Every write of a file's key (upload, rename copy, dedup copy, symlink) and every delete carries
a `Precondition`: the version this host last saw at that key (`MetaStore.known_version`), or
create-only when it saw none. A refusal (`VersionMismatch`) means another host changed the key
first: `_refused` asks the store what is there now and lets `ConflictCopies` keep both (the
default), or keeps the file dirty (`on_conflict = "fail"`); a delete that is refused leaves the
new object alone. `on_conflict = "overwrite"` sends no conditions (last writer wins).
"""

from __future__ import annotations

import contextlib
import logging
import stat
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path

import trio

from mountd.backend import (
    APPEND_MIN,
    CREATE_ONLY,
    AppendBase,
    ObjectInfo,
    ObjectStore,
    PatchRefused,
    Precondition,
)
from mountd.errors import ObjectNotFound, PosixError, RemoteError, UploadCancelled, VersionMismatch
from mountd.hashing import sha256_file, sha256_file_and_prefix
from mountd.meta import Inode, JournalEntry, MetaStore
from mountd.vfs.conflicts import ConflictCopies
from mountd.vfs.namespace import OBJECT_KINDS, metadata_for
from mountd.vfs.remote_calls import RemoteCalls
from mountd.vfs.writeback_view import WritebackView
from mountd.writeback import Journal
from mountd.writeback.sending import UploadsSending
from mountd.writeback.uploader import Retry, TransferSlots

log = logging.getLogger(__name__)
# files up to this size are hashed on the trio thread (about 30 us; a worker thread costs ~200 us)
INLINE_HASH_MAX = 16 << 10
HIDDEN_PREFIX = ".mountd-tmp-"  # names every store's listing skips (backend TMP_PREFIX)
KEY_WAIT = 30.0  # seconds an entry waits for a key another entry copies or overwrites, then retries


class Reconciler:
    def __init__(self, meta: MetaStore, stores: Mapping[str, ObjectStore], view: WritebackView,
                 journal: Journal, remote: RemoteCalls, sending: UploadsSending, conflicts: ConflictCopies,
                 slots: TransferSlots, *, dedup: bool, on_conflict: str = "keep-both",
                 on_remote_change: Callable[..., None] = lambda remote, key, version, attrs=False: None,
                 on_stored: Callable[[str, str, ObjectInfo | None, Mapping[str, str] | None], None] = (
                     lambda remote, key, info, metadata: None)) -> None:
        self.meta = meta
        self.slots = slots  # large files hash and send within these (shared with the Uploader)
        self.on_remote_change = on_remote_change  # the change log (ChangeFeed.changed)
        self.on_stored = on_stored  # the directory indexes (DirIndexes.stored)
        self.conflicts = conflicts
        self.on_conflict = on_conflict
        self.stores = stores
        self.view = view
        self.journal = journal
        self.remote = remote
        self.sending = sending
        self.dedup = dedup
        self._uploading: dict[tuple[str, str], trio.Event] = {}  # (remote, sha256) being uploaded now
        # overwriting a key and copying from it exclude each other (see `_evacuate`)
        self._copying_from: dict[tuple[str, str], int] = {}  # (remote, key) read by copies now
        self._writing: set[tuple[str, str]] = set()  # (remote, key) about to be overwritten
        self._keys_changed = trio.Event()
        self.stats = {"uploads": 0, "uploads_cancelled": 0, "bytes_uploaded": 0, "copies": 0, "deletes": 0,
                      "markers": 0, "metadata_updates": 0, "dedup_skipped": 0, "dedup_copied": 0,
                      "bytes_deduplicated": 0, "ignored": 0, "verify_failures": 0, "evacuated": 0,
                      "conflicts": 0, "delete_conflicts": 0, "patched_uploads": 0}

    def _expect(self, remote: str, key: str, ino: int | None = None) -> Precondition | None:
        """The compare-and-swap of a write to `key`: what this host last saw there."""
        if self.on_conflict == "overwrite":
            return None
        version = self.meta.known_version(remote, key, ino)
        return CREATE_ONLY if version is None else Precondition(version)

    async def apply(self, entry: JournalEntry) -> None:
        store = self.stores[entry.remote]
        node = self.view.resolve_key(entry.remote, entry.key)
        want_dir = entry.key.endswith("/")
        if node is None or node.is_dir != want_dir or entry.key == "":
            await self._delete(store, entry)
            return
        try:
            waited = await self.view.load_ignore_files(entry.remote, entry.key)
        except (RemoteError, PosixError) as e:
            raise Retry(f"cannot read the .mountdignore files above {entry.key!r}: {e}") from None
        if waited:  # (no await, no change: the namespace is as it was a moment ago)
            node = self.view.resolve_key(entry.remote, entry.key)
            if node is None:
                raise Retry("the path changed while reading ignore rules")
        if await self.view.is_ignored(node, (entry.remote, entry.key)):
            # local-only by the ignore rules: nothing goes to the remote, and nothing waits on it
            self.view.not_dirty(node.ino)
            self.stats["ignored"] += 1
            return
        if node.is_dir:
            await self._put_marker(store, node, entry.key)
        elif stat.S_IFMT(node.mode) in OBJECT_KINDS:  # a symlink, FIFO, socket or device node
            await self._put_small(store, node, entry.key)
        elif node.is_reg:
            await self._sync_file(store, node, entry.key)

    def _meta_of(self, node: Inode, sha256: str | None) -> dict[str, str]:
        return metadata_for(node.mode, node.uid, node.gid, node.mtime_ns, sha256, self.meta.xattrs(node.ino),
                            rdev=node.rdev, link_group=node.link_group)

    async def _delete(self, store: ObjectStore, entry: JournalEntry) -> None:
        if entry.key == "":
            return
        for other in self.meta.inodes_with_remote_key(entry.remote, entry.key):
            if self.meta.departure_dest(other.ino)[0]:
                raise Retry(f"waiting for {entry.key!r}, moved out of the remote, to be fetched")
            now = self.view.keys_of(other.ino, other)
            if now and (entry.remote, entry.key) not in now and not (other.has_local and other.content_dirty):
                raise Retry(f"waiting for {entry.key!r} to be copied to {now[0][1]!r}")
        # a marker holds no data and its version is not kept: deleted as before, unconditionally
        expect = None if entry.key.endswith("/") else self._expect(entry.remote, entry.key)
        try:
            await self.remote.call(store, partial(store.delete, expect=expect), entry.key,
                                   what=f"delete {entry.key}")
        except VersionMismatch:
            # another host wrote the key after this host last saw it: its object stays
            self.stats["delete_conflicts"] += 1
            log.warning("not deleting %s:%s: another host wrote a new version there after this host last "
                        "saw it (%s); it stays, and shows here at the next listing", entry.remote, entry.key,
                        expect.version if expect else "")
            self.view.forget_listing(entry.remote, entry.key)
        else:
            self.on_remote_change(entry.remote, entry.key, None)
            self.on_stored(entry.remote, entry.key, None, None)
        with self.meta.transaction():
            self.meta.hash_forget(entry.remote, entry.key)
            self.meta.displaced_forget(entry.remote, entry.key)
        self.stats["deletes"] += 1

    async def _put_marker(self, store: ObjectStore, node: Inode, key: str) -> None:
        if not node.marker or not node.attrs_dirty:
            return
        gen = node.attr_gen
        meta = self._meta_of(node, None)
        info = await self.remote.call(store, store.put_bytes, key, b"", meta)
        self._wrote(node.remote or "", key, info)
        self.stats["markers"] += 1
        self._done(node.ino, remote=node.remote or "", content_gen=None, attr_gen=gen, key=key, info=info,
                   sha256=None, stored=meta)

    async def _put_small(self, store: ObjectStore, node: Inode, key: str) -> None:
        """An object whose metadata says what it is: a symlink (its target is the body) or a FIFO,
        socket or device node (empty; `rdev` in the metadata)."""
        if node.remote_key == key and not node.attrs_dirty:
            return
        async with self._overwriting(store, node, key):
            node = self.meta.get(node.ino) or node
            gen = node.attr_gen
            target = node.target or b""
            expect = self._expect(node.remote or "", key, node.ino)
            meta = self._meta_of(node, None)
            info = await self.remote.call(store, partial(store.put_bytes, expect=expect), key, target,
                                          meta, what=f"put of {key}")
            self._wrote(node.remote or "", key, info)
        self._done(node.ino, remote=node.remote or "", content_gen=None, attr_gen=gen, key=key, info=info,
                   sha256=None, stored=meta)

    async def _sync_file(self, store: ObjectStore, node: Inode, key: str) -> None:
        if self.view.is_open_for_write(node.ino):
            raise Retry("the file is open for writing; it uploads after the last close")
        try:
            if (node.has_local and node.content_dirty) or (node.remote_key not in (key, None)):
                async with self._overwriting(store, node, key):
                    uploaded = await self._write_file(store, await self._stable_source(node, key), key)
            else:
                uploaded = await self._write_file(store, node, key)
        except VersionMismatch as e:
            await self._refused(store, node, key, e)
            return
        if uploaded is not None:
            # only now that `key` is released: others waiting to copy from it go on meanwhile
            await self.view.adopt_uploaded(node.ino, uploaded)

    async def _write_file(self, store: ObjectStore, node: Inode, key: str) -> int | None:
        """Make `key` hold the file; returns the content generation uploaded from the local tier, if any."""
        content_gen, attr_gen = node.content_gen, node.attr_gen
        if node.has_local and node.content_dirty:
            await self._upload(store, node, key, content_gen, attr_gen)
            return content_gen
        elif node.remote_key != key:
            if node.remote_key is None:
                return None
            meta = self._meta_of(node, node.sha256)
            try:
                info = await self._copy(store, node.remote or "", node.remote_key, key, meta, size=node.size,
                                        expect=self._expect(node.remote or "", key, node.ino))
            except ObjectNotFound:
                if node.has_local:
                    await self._upload(store, node, key, content_gen, attr_gen)
                    return content_gen
                raise
            self.stats["copies"] += 1
            self._done(node.ino, remote=node.remote or "", content_gen=content_gen, attr_gen=attr_gen,
                       key=key, info=info, sha256=node.sha256, stored=meta)
        elif node.attrs_dirty:
            meta = self._meta_of(node, node.sha256)
            info = await self.remote.call(store, store.set_metadata, key, meta)
            # S3 keeps the ETag of an object whose metadata alone changed (and GCS its generation):
            # followers take the flag, not the version, as the sign to read its attributes again
            self.on_remote_change(node.remote or "", key, info.version, attrs=True)
            self.stats["metadata_updates"] += 1
            self._done(node.ino, remote=node.remote or "", content_gen=content_gen, attr_gen=attr_gen,
                       key=key, info=info, sha256=node.sha256, stored=meta)
        return None

    async def _refused(self, store: ObjectStore, node: Inode, key: str, refusal: VersionMismatch) -> None:
        """A write of `key` found another version there than this host last saw (another host
        wrote it meanwhile, or deleted it)."""
        remote = node.remote or ""
        expected = self.meta.known_version(remote, key, node.ino)
        try:
            winner = await self.remote.call(store, store.head, key)
        except ObjectNotFound:
            # deleted by another host: nothing to lose by writing ours as a new object
            with self.meta.transaction():
                self.meta.displaced_forget(remote, key)
                fresh = self.meta.get(node.ino)
                if fresh is not None and fresh.remote_key == key:
                    self.meta.update(node.ino, remote_version=None)
            raise Retry(f"{key!r} was deleted by another host; writing it again as a new object") from None
        fresh = self.meta.get(node.ino)
        if fresh is None or (remote, key) not in self.view.keys_of(fresh.ino, fresh):
            raise Retry("the file moved while its upload was refused") from None
        if await self._is_ours(fresh, winner):
            # our own earlier write, whose result was never recorded (a crash, a failed check)
            with self.meta.transaction():
                self.meta.note_written(remote, key, winner.version)
                if fresh.remote_key == key:
                    self.meta.update(fresh.ino, remote_version=winner.version)
            raise Retry(f"{key!r} holds this host's own earlier upload; writing again over it")
        self.stats["conflicts"] += 1
        if self.on_conflict == "fail":
            self.conflicts.record_refusal(fresh, remote, key, winner.version, expected)
            raise Retry(f"conflict: another host wrote {key!r} (version {winner.version}) after this host "
                        f"last saw it; on_conflict = fail keeps this host's file dirty here ({refusal})")
        # ours (local bytes, or the object a rename copies from) goes to a conflict copy
        copy_key = self.conflicts.set_aside(fresh, remote, key, winner, expected)
        self.journal.put(remote, copy_key)

    async def _is_ours(self, node: Inode, found: ObjectInfo) -> bool:
        """Whether the object found at the key holds this file's bytes (by the sha256 it carries)."""
        stored = (found.metadata or {}).get("sha256")
        if not stored or not node.has_local:
            return False
        try:
            return await trio.to_thread.run_sync(sha256_file, self.view.local_path(node.ino)) == stored
        except FileNotFoundError:
            return False

    def _signal_keys(self) -> None:
        self._keys_changed.set()
        self._keys_changed = trio.Event()

    async def _wait_keys(self, why: str) -> None:
        with trio.move_on_after(KEY_WAIT):
            await self._keys_changed.wait()
            return
        raise Retry(why)

    async def _copy(self, store: ObjectStore, remote: str, src: str, dst: str, meta: dict[str, str] | None,
                    *, size: int, own_key: bool = False, expect: Precondition | None = None) -> ObjectInfo:
        """A server-side copy; `src` is not overwritten while it runs (`own_key`: the caller holds
        `src` already, by `_overwriting` or `_reading_from`); `expect` is about `dst`."""
        while not own_key and (remote, src) in self._writing:
            await self._wait_keys(f"{src!r} is being overwritten")
        with self._reading_from(remote, src):
            info = await self.remote.call(store, partial(store.copy, expect=expect), src, dst, meta,
                                          timeout=self.remote.transfer_timeout(size),
                                          what=f"copy of {src} to {dst}")
        self._wrote(remote, dst, info)
        return info

    def _wrote(self, remote: str, key: str, info: ObjectInfo) -> None:
        """A write of ours landed: whatever happens next (the file moved, a verification fails, a
        crash before `_done`), the next write of `key` compares against this version."""
        with self.meta.transaction():
            self.meta.note_written(remote, key, info.version)
        self.on_remote_change(remote, key, info.version)

    @contextlib.contextmanager
    def _reading_from(self, remote: str, key: str) -> Iterator[None]:
        """While held, `_overwriting(key)` waits: the object at `key` stays what it was."""
        ident = (remote, key)
        self._copying_from[ident] = self._copying_from.get(ident, 0) + 1
        try:
            yield
        finally:
            self._copying_from[ident] -= 1
            if not self._copying_from[ident]:
                del self._copying_from[ident]
            self._signal_keys()

    @contextlib.asynccontextmanager
    async def _overwriting(self, store: ObjectStore, node: Inode, key: str) -> AsyncIterator[None]:
        """Hold `key` for overwriting: copies from it finish first, new ones wait; others' bytes saved."""
        ident = (node.remote or "", key)
        while ident in self._copying_from:
            await self._wait_keys(f"{key!r} is being copied")
        self._writing.add(ident)
        try:
            await self._evacuate(store, node, key)
            yield
        finally:
            self._writing.discard(ident)
            self._signal_keys()

    async def _stable_source(self, node: Inode, key: str) -> Inode:
        """The inode re-read until the key its bytes live at is not being overwritten by another entry.

        Returns without an await after the last check, so the copy that follows starts unopposed."""
        while True:
            fresh = self.meta.get(node.ino) or node
            src = fresh.remote_key
            if src is None or src == key or (fresh.remote or "", src) not in self._writing:
                return fresh
            await self._wait_keys(f"{src!r} is being overwritten")

    async def _evacuate(self, store: ObjectStore, node: Inode, key: str) -> None:
        """Before `key` is overwritten, save the bytes other inodes still take from it.

        After renames such as `mv a b; mv c a` (log rotation) or RENAME_EXCHANGE, the object at
        `key` may be the only copy of another file's content, not yet copied to that file's new
        key. Overwriting it first would give that file the new bytes. So its object is copied
        to a hidden key, every other inode that takes its bytes from `key` points there, and
        the hidden key is journaled (deleted once nothing needs it). Afterwards only the inode
        being written claims `key`. A file moved out of the remote whose bytes are not fetched
        yet (departures.py) is saved the same way."""
        remote = node.remote or ""
        for other in self.meta.inodes_with_remote_key(remote, key):
            if other.ino == node.ino or (other.has_local and other.content_dirty):
                continue
            # also one that is at `key` itself: it got there (exchange, rename back) after this
            # entry chose its inode, and would wrongly believe `key` still holds its bytes
            if not self.view.keys_of(other.ino, other) and not self.meta.departure_dest(other.ino)[0]:
                continue  # unlinked (open only): its reads keep going to `key` as before
            parent = key.rpartition("/")[0]
            hidden = (parent + "/" if parent else "") + f"{HIDDEN_PREFIX}moved-{uuid.uuid4().hex}"
            info = await self._copy(store, remote, key, hidden, None, size=other.size, own_key=True)
            with self.meta.transaction():
                fresh = self.meta.get(other.ino)
                if fresh is not None and fresh.remote_key == key:
                    self.meta.update(other.ino, remote_key=hidden, remote_version=info.version)
                self.journal.put(remote, hidden)  # deleted once every inode copied away from it
            self._signal_keys()
            self.stats["evacuated"] += 1
            log.debug("saved %r of inode %d at %r before overwriting it", key, other.ino, hidden)

    async def _upload(self, store: ObjectStore, node: Inode, key: str, content_gen: int,
                      attr_gen: int) -> None:
        path = self.view.local_path(node.ino)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise Retry("the local file went away before the upload") from None
        # a large file hashes and sends within one of the uploader's few large slots; small files
        # (the round trip, not the bandwidth, is their cost) run many at once
        async with self.slots.slot(size):
            await self._upload_now(store, node, key, content_gen, attr_gen, path, size)

    async def _upload_now(self, store: ObjectStore, node: Inode, key: str, content_gen: int, attr_gen: int,
                          path: Path, size_before: int) -> None:
        remote = node.remote or ""
        if await self._patchable(store, node, key):
            await self._upload_patch(store, node, key, content_gen, attr_gen, path)
            return
        base = await self._append_base(store, node, key, path)
        try:
            prefix = base.size if base else 0
            if size_before <= INLINE_HASH_MAX:  # quicker than a trip to a worker thread
                sha, head_sha = sha256_file_and_prefix(path, prefix)
            else:
                sha, head_sha = await trio.to_thread.run_sync(sha256_file_and_prefix, path, prefix)
            size = path.stat().st_size
        except FileNotFoundError:
            # unlinked or replaced (rename over it) while we hashed: look at the key again
            raise Retry("the local file went away during the upload") from None
        if base is not None and head_sha != node.sha256:
            base = None  # not only appended to: sent whole
        meta = self._meta_of(node, sha)
        info: ObjectInfo | None = None
        if self.dedup or node.nlink > 1:
            # identical content already on its way up: wait for it, then copy instead of sending it
            # twice (the names of a file with hard links always: each is a copy of the first sent)
            while True:
                while (busy := self._uploading.get((remote, sha))) is not None:
                    await busy.wait()
                info = await self._dedup(store, remote, key, sha, meta, size)
                if info is not None or (remote, sha) not in self._uploading:
                    break  # (another upload of the same content may have started during _dedup)
        if info is None:
            done = self._uploading[(remote, sha)] = trio.Event()
            try:
                try:
                    with self.sending.sending(remote, key, store,
                                              lambda: self._still_wanted(node.ino, content_gen, remote, key)):
                        info = await self.remote.upload(store, path, key, meta, key=key, size=size,
                                                        expect=self._expect(remote, key, node.ino),
                                                        append_to=base)
                    self._wrote(remote, key, info)
                except UploadCancelled as e:
                    self.stats["uploads_cancelled"] += 1
                    raise Retry(str(e)) from None
                self.stats["uploads"] += 1
                self.stats["bytes_uploaded"] += size
                self._verify(key, info, size, sha)
            finally:  # waiters run after our next checkpoint, so they see the index update below
                if self._uploading.get((remote, sha)) is done:  # (without dedup, two may send one content)
                    del self._uploading[(remote, sha)]
                done.set()
        else:
            self.stats["bytes_deduplicated"] += size
        fresh = self.meta.get(node.ino)
        if fresh is not None and fresh.content_gen == content_gen:
            # only content that did not change during the upload may feed the dedup index
            with self.meta.transaction():
                self.meta.hash_put(remote, sha, key, info.version)
        self._done(node.ino, remote=node.remote or "", content_gen=content_gen, attr_gen=attr_gen, key=key,
                   info=info, sha256=sha, stored=meta)

    async def _patchable(self, store: ObjectStore, node: Inode, key: str) -> bool:
        """Whether the file holds only some chunks of the object at `key` (vfs/partial.py) and is
        sent as a patch of it. One that holds them of another key (renamed, set aside as a
        conflict copy) or goes to a store that cannot patch gets its missing chunks first; where
        their version is gone (another host replaced it), they stay zeros, and the conflict is
        recorded (`base-lost`)."""
        row = self.view.partial_of(node.ino)
        if row is None:
            return False
        if row.remote == (node.remote or "") and row.key == key and store.patches:
            return True
        await self._make_whole(node, key)
        return False

    async def _make_whole(self, node: Inode, key: str) -> None:
        """Fetch the missing chunks of a partial file; those whose version is gone stay zeros,
        and the conflict is recorded (`base-lost`) and logged."""
        row = self.view.partial_of(node.ino)
        lost = await self.view.complete_partial(node.ino)
        if row is None or not lost:
            return
        with self.meta.transaction():
            self.meta.conflict_add(row.remote, row.key, copy_key=key if key != row.key else None,
                                   expected=row.version, found=None, local_mtime_ns=node.mtime_ns,
                                   resolution="base-lost")
        log.error("%s:%s was edited here while another host replaced it: the bytes this host did not "
                  "write, %d ranges from %d, were gone and are zeros in %r (the bytes written here "
                  "are kept)", row.remote, row.key, len(lost), lost[0][0], key)

    async def _upload_patch(self, store: ObjectStore, node: Inode, key: str, content_gen: int, attr_gen: int,
                            path: Path) -> None:
        """Send only the changed chunks of a partial file; the rest is copied from the object
        server-side. Its content hash is unknown (that would need every byte): the object carries
        none, and deduplication skips it."""
        remote = node.remote or ""
        meta = self._meta_of(node, None)
        refused: RemoteError | None = None
        async with self.view.partial_uploading(node.ino):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise Retry("the local file went away before the upload") from None
            patch = await self.view.partial_patch(node.ino, size)
            if patch is None:
                raise Retry("the file became whole before its upload")
            try:
                with self.sending.sending(remote, key, store,
                                          lambda: self._still_wanted(node.ino, content_gen, remote, key)):
                    info = await self.remote.upload(store, path, key, meta, key=key, size=size,
                                                    expect=self._expect(remote, key, node.ino), patch=patch)
                self._wrote(remote, key, info)
            except UploadCancelled as e:
                self.stats["uploads_cancelled"] += 1
                raise Retry(str(e)) from None
            except (PatchRefused, ObjectNotFound) as e:  # (not found: another host deleted the object)
                refused = e
            else:
                self.view.partial_uploaded(node.ino, key, info.version, size)
        if refused is not None:
            await self._make_whole(node, key)
            raise Retry(f"{refused}; its missing chunks were fetched, and it is sent whole next") from None
        self.stats["uploads"] += 1
        self.stats["patched_uploads"] += 1
        self.stats["bytes_uploaded"] += patch.sent_bytes(size)
        self._verify(key, info, size, "")
        self._done(node.ino, remote=remote, content_gen=content_gen, attr_gen=attr_gen, key=key,
                   info=info, sha256=None, stored=meta)

    async def _append_base(self, store: ObjectStore, node: Inode, key: str, path: Path) -> AppendBase | None:
        """The object at `key` as the start of the file, when the file may only have grown past it
        (the caller checks the bytes): a large file whose last upload went to this key, on a
        store that can copy ranges of an object server-side into a new one. One HEAD."""
        if not store.appends or node.remote_key != key or not node.sha256 or not node.remote_version:
            return None
        try:
            if path.stat().st_size < 2 * APPEND_MIN:
                return None
            head = await self.remote.call(store, store.head, key)
        except (FileNotFoundError, RemoteError):
            return None
        stored_sha = (head.metadata or {}).get("sha256")
        if (head.version != node.remote_version or stored_sha not in (None, node.sha256)
                or head.size < APPEND_MIN):
            return None
        return AppendBase(size=head.size, version=head.version)

    def _still_wanted(self, ino: int, content_gen: int, remote: str, key: str) -> bool:
        """Whether an upload of this content generation is still what `key` must hold."""
        node = self.meta.get(ino)
        return (node is not None and node.content_gen == content_gen
                and (remote, key) in self.view.keys_of(ino, node))

    def _verify(self, key: str, info: ObjectInfo, size: int, sha: str) -> None:
        """The object as the remote reports it after the upload must be what we sent."""
        stored_sha = (info.metadata or {}).get("sha256")
        if info.size != size or (stored_sha is not None and stored_sha != sha):
            self.stats["verify_failures"] += 1
            raise Retry(f"verification of {key!r} failed (remote size {info.size}, local {size}"
                        f"{', sha256 differs' if stored_sha not in (None, sha) else ''}); uploading again")

    async def _dedup(self, store: ObjectStore, remote: str, key: str, sha: str, meta: dict[str, str],
                     size: int) -> ObjectInfo | None:
        """An ObjectInfo when the content is already in the remote (skipped or copied), else None."""
        for src_key, version in self.meta.hash_lookup(remote, sha):
            if src_key != key and (remote, src_key) in self._writing:
                continue  # being overwritten: by the time we copied, its bytes might not be ours
            # from the HEAD to the end of the copy, nobody overwrites src_key (see `_overwriting`)
            with self._reading_from(remote, src_key):
                try:
                    head = await self.remote.call(store, store.head, src_key)
                except ObjectNotFound:
                    with self.meta.transaction():
                        self.meta.hash_forget(remote, src_key)
                    continue
                stored_sha = (head.metadata or {}).get("sha256")
                if head.size != size or stored_sha not in (None, sha):
                    continue
                if head.version != version:
                    # some servers answer an upload with one ETag and a HEAD with another (a
                    # multipart ETag, then the MD5): the object's own sha256 settles it
                    if stored_sha != sha:
                        continue
                    with self.meta.transaction():
                        self.meta.hash_put(remote, sha, src_key, head.version)
                if src_key == key:
                    if head.metadata is not None and dict(head.metadata) != meta:
                        head = await self.remote.call(store, store.set_metadata, key, meta)
                    self.stats["dedup_skipped"] += 1
                    return head
                info = await self._copy(store, remote, src_key, key, meta, size=size, own_key=True,
                                        expect=self._expect(remote, key))
            self.stats["dedup_copied"] += 1
            return info
        return None

    def _done(self, ino: int, *, remote: str, content_gen: int | None, attr_gen: int, key: str,
              info: ObjectInfo, sha256: str | None, stored: Mapping[str, str]) -> None:
        """Record what the remote now holds (`stored`: the metadata it was given), unless the
        inode changed while we worked."""
        self.on_stored(remote, key, info, stored)
        node = self.meta.get(ino)
        if node is None:
            with self.meta.transaction():
                self.meta.note_written(remote, key, info.version)
            return
        values: dict[str, object] = {}
        if (remote, key) in self.view.keys_of(ino, node):
            if content_gen is not None and node.content_gen == content_gen:
                values.update(synced_gen=content_gen, remote_key=key if not node.is_dir else node.remote_key,
                              remote_version=info.version)
                self.view.not_dirty(ino)
                if sha256:
                    values["sha256"] = sha256
            elif stat.S_IFMT(node.mode) in OBJECT_KINDS or (content_gen is not None and not node.is_dir):
                # a file that changed during its upload stays dirty, but the object at `key` is the
                # one just written: its next upload compares against this version, not the old one
                values.update(remote_key=key, remote_version=info.version)
            if node.attr_gen == attr_gen:
                values["synced_attr_gen"] = attr_gen
        with self.meta.transaction():
            if values:
                self.meta.update(ino, **values)
            self.meta.note_written(remote, key, info.version)
        if values:
            fresh = self.meta.get(ino)
            if fresh is not None:
                self.view.recorded(node, fresh)
        if content_gen is not None and node.content_gen != content_gen:
            raise Retry("the file changed while it was uploading; uploading again")
        if node.attr_gen != attr_gen and stat.S_IFMT(node.mode):
            raise Retry("attributes changed while uploading")
