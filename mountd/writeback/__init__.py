"""Write-back: the journal of remote mutations and the uploader that applies it."""

from mountd.writeback.journal import Journal
from mountd.writeback.uploader import Uploader

__all__ = ["Journal", "Uploader"]
