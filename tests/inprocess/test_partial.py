"""Edits in place of large remote files: only the chunks written are fetched and sent
(vfs/partial.py), on a file:// remote whose store builds the new object from the old one's
ranges as S3's UploadPartCopy does. The same on S3 servers: tests/test_edits_in_place.py."""

from __future__ import annotations

import os
import random

from mountd.vfs.namespace import object_ref
from tests.inprocess.harness import remote_files

MiB = 1 << 20
CHUNK = 5 * MiB
CHUNKED = 'multipart_chunk = "5M"'


def seeded(make_mount, tmp_path, size: int, **config):
    """A mount whose remote holds `big` (random bytes of `size`), put there by another tool: its
    bytes are in neither the local tier nor the cache (a file whose cache holds it all is taken
    from there whole, with no download)."""
    data = bytearray(random.Random(size).randbytes(size))
    remote = tmp_path / "repo" / "remote"
    remote.mkdir(parents=True)
    (remote / "big").write_bytes(data)
    m = make_mount(writeback=CHUNKED, **config)
    assert m.getattr("/data/big").size == size
    return m, data


def moved(m, before: dict[str, int]) -> dict[str, int]:
    after = m.stack.stores["main"].statistics()
    return {k: after.get(k, 0) - before.get(k, 0) for k in ("bytes_downloaded", "bytes_uploaded", "patches")}


def test_an_edit_in_the_middle_fetches_and_sends_only_its_chunk(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 20 * MiB)
    before = dict(m.stack.stores["main"].statistics())
    fh = m.open("/data/big", os.O_RDWR)
    assert moved(m, before)["bytes_downloaded"] == 0  # (an open for writing fetches nothing)
    at = 11 * MiB + 100
    m.write(fh, at, b"E" * 4096)
    data[at:at + 4096] = b"E" * 4096
    assert moved(m, before)["bytes_downloaded"] == CHUNK  # the one chunk the write reached
    shown = m.run(m.stack.fs.introspect.xattrs, m.ino("/data/big"))
    assert shown["user.mountd.local"] == b"partial" and shown["user.mountd.cached_bytes"] == b"%d" % CHUNK
    # the other chunks still read from the object, the written one from the local tier
    assert m.read(fh, 0, 20 * MiB) == data
    m.close(fh)
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data
    sent = moved(m, before)
    assert sent["patches"] == 1 and sent["bytes_uploaded"] == CHUNK
    node = m.stack.meta.get(m.ino("/data/big"))
    assert node is not None and not node.has_local and not m.stack.fs.partial.is_partial(node.ino)
    assert m.read_file("/data/big") == data


def test_an_edit_of_a_file_written_here_takes_its_part_from_the_cache(make_mount, tmp_path):
    """After its upload a file's local copy is the cache's: an edit then downloads nothing, and
    sends only the part it changed."""
    m = make_mount(writeback=CHUNKED)
    data = bytearray(random.Random(1).randbytes(20 * MiB))
    m.create("/data/mine", bytes(data))
    m.drain()
    before = dict(m.stack.stores["main"].statistics())
    m.write_at("/data/mine", 6 * MiB, b"edit")
    data[6 * MiB:6 * MiB + 4] = b"edit"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["mine"] == data
    assert moved(m, before) == {"bytes_downloaded": 0, "bytes_uploaded": CHUNK, "patches": 1}


def test_an_edit_survives_a_crash_before_its_upload(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 20 * MiB, delay="1h")
    m.write_at("/data/big", 7 * MiB, b"crash-safe")
    data[7 * MiB:7 * MiB + 10] = b"crash-safe"
    m.run_sync(m.crash)
    m.join()
    again = make_mount(writeback=CHUNKED)  # the same remote, local tier and db
    assert again.read_file("/data/big") == data
    again.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data


def test_a_file_grown_past_its_old_end_sends_the_growth_and_the_short_last_chunk(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 18 * MiB)  # its last chunk is 3 MiB: short for a part of its own
    before = dict(m.stack.stores["main"].statistics())
    fh = m.open("/data/big", os.O_WRONLY)
    m.write(fh, 11 * MiB, b"middle")  # chunk 2 of 0-3
    m.write(fh, 30 * MiB, b"tail")  # past the end, not reaching the last chunk
    m.close(fh)
    data[11 * MiB:11 * MiB + 6] = b"middle"
    data += bytes(30 * MiB - len(data)) + b"tail"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data
    sent = moved(m, before)
    assert sent["patches"] == 1
    # chunk 2 before its write, and the short chunk 3 before the upload (copied, it would be a
    # part under the minimum followed by more)
    assert sent["bytes_downloaded"] == CHUNK + 3 * MiB
    assert sent["bytes_uploaded"] == 30 * MiB + 4 - 2 * CHUNK  # from chunk 2 to the end


def test_a_truncate_or_a_rename_of_an_edited_file_keeps_every_byte(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 20 * MiB, delay="1h")
    m.write_at("/data/big", 2 * MiB, b"first")
    data[2 * MiB:2 * MiB + 5] = b"first"
    m.rename("/data/big", "/data/moved")  # (the old key goes: its missing chunks are fetched first)
    m.truncate("/data/moved", 17 * MiB)
    del data[17 * MiB:]
    assert m.read_file("/data/moved") == data
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"moved": data}


def test_an_append_fetches_nothing_and_sends_the_new_bytes(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 18 * MiB)
    before = dict(m.stack.stores["main"].statistics())
    fh = m.open("/data/big", os.O_WRONLY | os.O_APPEND)
    m.write(fh, 18 * MiB, b"appended")  # (the kernel gives O_APPEND writes the end's offset)
    m.close(fh)
    data += b"appended"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data
    assert moved(m, before) == {"bytes_downloaded": 0, "bytes_uploaded": 8, "patches": 1}


def test_an_edit_of_an_object_another_host_replaced_goes_to_a_whole_conflict_copy(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 20 * MiB, delay="1h")
    fh = m.open("/data/big")
    assert m.read(fh, 0, 16 * MiB) == data[:16 * MiB]  # the cache's first 16 MiB
    m.close(fh)
    ref = object_ref(m.stack.meta.get(m.ino("/data/big")))
    m.until(lambda: m.stack.reader.describe(ref)[1] >= 16 * MiB)
    m.write_at("/data/big", 17 * MiB, b"ours")
    data[17 * MiB:17 * MiB + 4] = b"ours"
    remote = tmp_path / "repo" / "remote"
    (remote / "other").write_bytes(b"theirs")
    os.replace(remote / "other", remote / "big")  # another host's object at the key
    m.drain()
    files = remote_files(remote)
    assert files.pop("big") == b"theirs"
    [(name, copy)] = files.items()
    assert name.startswith("big.conflict-")
    # the chunks this host did not write came from the version it edited, still in the cache
    assert copy == data


def test_an_edit_whose_old_version_is_gone_keeps_the_bytes_written_here(make_mount, tmp_path):
    m, data = seeded(make_mount, tmp_path, 20 * MiB, delay="1h")
    m.write_at("/data/big", 12 * MiB, b"ours")
    remote = tmp_path / "repo" / "remote"
    (remote / "other").write_bytes(b"theirs")
    os.replace(remote / "other", remote / "big")
    m.drain()
    files = remote_files(remote)
    assert files.pop("big") == b"theirs"
    [(name, copy)] = files.items()
    # the chunk written here is whole (fetched before the write); the others were gone
    assert copy[10 * MiB:15 * MiB] == data[10 * MiB:12 * MiB] + b"ours" + data[12 * MiB + 4:15 * MiB]
    assert copy[:10 * MiB] == bytes(10 * MiB) and copy[15 * MiB:] == bytes(5 * MiB)
    [conflict] = [c for c in m.stack.meta.conflicts() if c["resolution"] == "base-lost"]
    assert conflict["key"] == "big" and conflict["copy_key"] == name


def test_a_pinned_file_is_edited_whole_and_stays_pinned(make_mount, tmp_path):
    """A pinned file's bytes are all in the pinned store: an edit takes the file whole from there
    (no download) and hands it back whole after the upload, so the new version stays pinned (a
    partial copy would be dropped after the upload instead)."""
    m, data = seeded(make_mount, tmp_path, 20 * MiB)

    async def pin() -> None:
        fs = m.stack.fs
        async for _ in m.stack.reader.pin("/data/big", fs.paths.scope("/data/big"),
                                          await fs.remote_files_under("/data/big")):
            pass

    m.run(pin)
    before = dict(m.stack.stores["main"].statistics())
    m.write_at("/data/big", 11 * MiB, b"pinned")
    data[11 * MiB:11 * MiB + 6] = b"pinned"
    assert not m.stack.fs.partial.is_partial(m.ino("/data/big"))
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data
    assert moved(m, before)["bytes_downloaded"] == 0
    ref = object_ref(m.stack.meta.get(m.ino("/data/big")))
    assert m.stack.reader.describe(ref) == ("pinned", 20 * MiB)


def test_the_s3_part_plan_keeps_every_part_but_the_last_at_the_minimum():
    """Parts of a patch: copied runs from the old object, sent runs from the local file, every part
    but the last at least 5 MiB (a sent run of 5 MiB and one byte is one part, not two of 2.5)."""
    from mountd.backend import PatchBase
    from mountd.backend.s3 import S3_MIN_PART, part_plan

    plans = [
        part_plan(30 * MiB, PatchBase(20 * MiB, "v", ((5 * MiB, 10 * MiB),)), 5 * MiB),
        part_plan(10 * MiB + 1, PatchBase(10 * MiB, "v", ((5 * MiB, 10 * MiB),)), 5 * MiB),
        part_plan(64 * MiB, PatchBase(64 * MiB, "v", ((16 * MiB, 48 * MiB),)), 16 * MiB),
        part_plan(65 * MiB, PatchBase(64 * MiB, "v", ()), 16 * MiB),
    ]
    for plan, size in zip(plans, (30 * MiB, 10 * MiB + 1, 64 * MiB, 65 * MiB), strict=True):
        assert plan[0][0] == 0 and plan[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(plan, plan[1:], strict=False))
        assert all(e - s >= S3_MIN_PART for s, e, _ in plan[:-1]), plan
    assert plans[1] == [(0, 5 * MiB, True), (5 * MiB, 10 * MiB + 1, False)]
    assert plans[3] == [(0, 64 * MiB, True), (64 * MiB, 65 * MiB, False)]
    assert [copied for _, _, copied in plans[2]] == [True, False, False, True]


def test_a_file_open_for_reading_during_its_patch_reads_the_new_version_after_it(make_mount, tmp_path):
    """An upload while the file is open keeps its partial copy (only a closed file's copy is
    dropped): its missing parts are then read from the version just written, for the one it
    was edited from is gone, and a second edit patches that version."""
    m, data = seeded(make_mount, tmp_path, 20 * MiB)
    reader = m.open("/data/big")
    m.write_at("/data/big", 3 * MiB, b"one")
    data[3 * MiB:3 * MiB + 3] = b"one"
    m.drain()
    ino = m.ino("/data/big")
    row = m.stack.fs.partial.get(ino)
    assert row is not None and row.version == m.stack.meta.get(ino).remote_version
    assert m.read(reader, 0, 20 * MiB) == data  # parts 1-3 from the new version
    m.write_at("/data/big", 17 * MiB, b"two")
    data[17 * MiB:17 * MiB + 3] = b"two"
    m.close(reader)
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote")["big"] == data
    assert m.stack.stores["main"].statistics()["patches"] == 2
    assert not m.stack.fs.partial.is_partial(ino) and m.read_file("/data/big") == data


def test_an_edit_of_an_object_another_host_deleted_keeps_the_bytes_written_here(make_mount, tmp_path):
    """The object is gone when the patch is sent: the missing chunks cannot be had (zeros), the
    conflict is recorded as `base-lost`, and the file is written as a new object."""
    m, data = seeded(make_mount, tmp_path, 20 * MiB, delay="1h")
    m.write_at("/data/big", 12 * MiB, b"ours")
    (tmp_path / "repo" / "remote" / "big").unlink()  # another host deleted it
    m.drain()
    stored = remote_files(tmp_path / "repo" / "remote")["big"]
    assert stored[10 * MiB:15 * MiB] == data[10 * MiB:12 * MiB] + b"ours" + data[12 * MiB + 4:15 * MiB]
    assert stored[:10 * MiB] == bytes(10 * MiB) and stored[15 * MiB:] == bytes(5 * MiB)
    [conflict] = [c for c in m.stack.meta.conflicts() if c["resolution"] == "base-lost"]
    assert conflict["key"] == "big" and conflict["copy_key"] is None
