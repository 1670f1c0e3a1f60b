"""meta.db carries its schema version: an older one is migrated in place, a newer one refused.

The local tier outlives a mountd upgrade (and a downgrade): a database from before versions were
kept (schema 1) must come up with its inodes and journal intact, and one written by a newer
mountd must stop the mount with one line that says what to do, before anything is mounted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mountd.meta.store import _SCHEMA, SCHEMA_VERSION, MetaStore, SchemaTooNew
from tests.conftest import MountedRepo, is_mounted, mountd_cmd


def make_schema_1(path: Path) -> None:
    """A database as mountd wrote it before schema versions: no user_version, a settings table."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA + "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT);")
    db.execute("INSERT INTO inodes (ino, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, remote, remote_key,"
               " remote_version) VALUES (7, 33188, 0, 0, 1, 1, 1, 'main', 'a/b.bin', 'etag-1')")
    db.execute("INSERT INTO journal (remote, key, due, seq) VALUES ('main', 'a/b.bin', 0, 1)")
    db.commit()
    db.close()


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_a_schema_1_database_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "meta.db"
    make_schema_1(path)
    meta = MetaStore(path)
    try:
        assert meta.schema_version == SCHEMA_VERSION == 6
        node = meta.get(7)
        assert node is not None and node.remote_key == "a/b.bin"
        assert [e.key for e in meta.journal_all()] == ["a/b.bin"]
        assert meta.known_version("main", "a/b.bin") == "etag-1"
        assert meta.conflicts() == []
    finally:
        meta.close()
    assert "settings" not in tables(path)
    assert {"displaced", "conflicts", "listing_resume", "partial"} <= tables(path)
    MetaStore(path).close()  # opening again migrates nothing


def test_a_new_database_starts_at_the_current_schema(tmp_path):
    meta = MetaStore(tmp_path / "meta.db")
    try:
        assert meta.schema_version == SCHEMA_VERSION
    finally:
        meta.close()
    assert ({"inodes", "dentries", "journal", "hashes", "displaced", "conflicts"}
            <= tables(tmp_path / "meta.db"))


def test_a_database_of_a_newer_mountd_is_refused_untouched(tmp_path):
    path = tmp_path / "meta.db"
    MetaStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match=f"schema {SCHEMA_VERSION + 1}, and this mountd knows up to "
                                           f"{SCHEMA_VERSION}"):
        MetaStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_mount_on_a_newer_database_fails_with_one_line_before_mounting(tmp_path):
    repo = MountedRepo(tmp_path / "repo")
    repo.local.mkdir(parents=True)
    db = sqlite3.connect(repo.local / "meta.db")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    r = mountd_cmd("mount", str(repo.config), str(repo.mp), check=False, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "schema 99" in lines[0] and "another local.path" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not is_mounted(repo.mp)


def test_journal_keys_under_a_prefix_are_exactly_those_that_start_with_it(tmp_path):
    """The journal's keys under a directory's prefix, read as a range of the primary key: the
    neighbours on either side of the range (`a0`, `a`, `a.`, `b/`) and another remote's keys stay out."""
    meta = MetaStore(tmp_path / "meta.db")
    keys = ["a", "a.", "a/x", "a/b/c", "a/\u00e9t\u00e9", "a/\U0001f600", "a0", "a0/x", "b/a/x", ""]
    with meta.transaction():
        for k in keys:
            meta.journal_put("r", k, 0.0)
        meta.journal_put("other", "a/y", 0.0)
    assert meta.journal_keys_under("r", "a/") == {"a/x", "a/b/c", "a/\u00e9t\u00e9", "a/\U0001f600"}
    assert meta.journal_keys_under("r", "a/b/") == {"a/b/c"}
    assert meta.journal_keys_under("r", "") == set(keys)
    assert meta.journal_keys_under("r", "c/") == set()
    meta.close()
