"""Whether a remote really enforces conditional writes: asked of the server, not assumed.

A store sends Preconditions for the operations in its `conditional` set, but the server decides
whether it honours them: emulators and S3-compatible servers often accept `If-None-Match` and
then overwrite anyway. `probe_conditions` writes a temporary object create-only twice and once
with a wrong `If-Match`, and reports what the server did; `mountd check --write` prints it and a
remote with `require_conditional = true` refuses to mount without it. It must never leave its
temporary object behind, and never writes on a read-only remote (callers check).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from mountd.backend import CONDITIONAL_OPS, CREATE_ONLY, ObjectStore, Precondition
from mountd.errors import VersionMismatch

log = logging.getLogger(__name__)
PROBE_PREFIX = ".mountd-check-"


@dataclass(frozen=True, slots=True)
class ConditionReport:
    create_only: bool  # a second create-only write of one key was refused
    if_match: bool  # a write with a version that is not the object's was refused

    @property
    def enforced(self) -> bool:
        return self.create_only and self.if_match

    def describe(self) -> str:
        if self.enforced:
            return ("conditional writes enforced (create-only and if-match): hosts sharing it cannot "
                    "overwrite each other's changes")
        missing = [n for n, ok in (("create-only", self.create_only), ("if-match", self.if_match)) if not ok]
        return (f"the server ignores {' and '.join(missing)} writes: hosts sharing this remote "
                "overwrite each other (last writer wins)")


def probe_conditions(store: ObjectStore) -> ConditionReport:
    """Write a temporary object three ways and delete it; raises RemoteError when a plain write fails."""
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    first = store.put_bytes(key, b"mountd condition probe 1\n", {}, expect=CREATE_ONLY)
    try:
        try:
            store.put_bytes(key, b"mountd condition probe 2\n", {}, expect=CREATE_ONLY)
            create_only = False
        except VersionMismatch:
            create_only = True
        current = store.head(key).version
        wrong = Precondition(("0" if not current.startswith("0") else "1") + current[1:] if current else "x")
        if wrong.version == first.version:
            wrong = Precondition(first.version + "0")
        try:
            store.put_bytes(key, b"mountd condition probe 3\n", {}, expect=wrong)
            if_match = False
        except VersionMismatch:
            if_match = True
    finally:
        store.delete(key)
    return ConditionReport(create_only=create_only, if_match=if_match)


def unconditional_ops(store: ObjectStore) -> list[str]:
    """The operations for which this store's client cannot send a condition at all."""
    return [op for op in CONDITIONAL_OPS if op not in store.conditional]


def warn_unconditional(store: ObjectStore) -> None:
    """Once per remote, at mount: which writes go out without a compare-and-swap."""
    ops = unconditional_ops(store)
    if ops:
        log.warning("remote %r: its client sends no conditions with %s: those writes are last-writer-wins "
                    "between hosts", store.name, ", ".join(ops))
