"""SQLite state of a mount: inodes, directory entries, the write-back journal, the hash index."""

from mountd.meta.store import Inode, JournalEntry, MetaStore, PartialCopy

__all__ = ["Inode", "JournalEntry", "MetaStore", "PartialCopy"]
