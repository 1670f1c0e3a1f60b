"""`mountd check CONFIG`: validate a repository config and probe every remote, changing no data.

For each remote, in parallel, and each step bounded by a timeout (a stalled server fails the
step, it does not hang the command): **list** the root (reachability, credentials, the bucket
exists), **read** one byte of the first object found near the root, and, only when asked,
**write** a temporary object and delete it again (never on a `read_only` remote), then write one
create-only twice and once with a wrong if-match to see whether the server enforces **conditions**
(what many hosts sharing the remote rely on). Results are
plain dataclasses; the CLI prints them. Messages come from the `RemoteError` family, so they
name the remote and never contain secrets.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mountd.backend import ObjectStore, StoreTuning
from mountd.backend.conditions import probe_conditions
from mountd.backend.factory import open_store
from mountd.config import RemoteConfig, RepoConfig
from mountd.errors import ConfigError, MountdError

CHECK_PREFIX = ".mountd-check-"
SEARCH_DEPTH = 3  # levels of prefixes searched for an object to read


@dataclass(frozen=True, slots=True)
class StepResult:
    remote: str
    url: str
    step: str  # "list", "read", "write" or "conditions"
    ok: bool
    detail: str  # what was seen, or the error
    seconds: float
    skipped: bool = False


def _find_object(store: ObjectStore) -> str | None:
    prefix = ""
    for _ in range(SEARCH_DEPTH):
        listing = store.list_dir(prefix)
        for obj in listing.objects:
            if obj.size > 0:
                return obj.key
        if not listing.prefixes:
            return None
        prefix = f"{prefix}{listing.prefixes[0]}/"
    return None


def _in_daemon_thread(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished, result or exception) of `fn` run in a daemon thread, waited for at most `timeout`.

    A daemon thread, so a request stalled inside an SDK never keeps the command from exiting."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # handed to the caller
            box.append(e)

    t = threading.Thread(target=target, daemon=True, name="mountd-check")
    t.start()
    t.join(timeout)
    return (bool(box), box[0] if box else None)


class _Steps:
    """The steps of one remote, each run in a worker thread with its own deadline."""

    def __init__(self, remote: RemoteConfig, store: ObjectStore, timeout: float) -> None:
        self.remote = remote
        self.store = store
        self.timeout = timeout

    def run(self, step: str, fn: Callable[[], str]) -> StepResult:
        t0 = time.monotonic()
        finished, value = _in_daemon_thread(fn, self.timeout)
        if not finished:
            detail, ok = (f"remote {self.remote.name!r}: no answer from {self.store.display_url} within "
                          f"{self.timeout:g}s (the server stalls or is overloaded)"), False
        elif isinstance(value, MountdError):
            detail, ok = str(value), False
        elif isinstance(value, BaseException):
            raise value
        else:
            detail, ok = str(value), True
        return StepResult(self.remote.name, self.store.display_url, step, ok, detail, time.monotonic() - t0)


def check_remote(remote: RemoteConfig, *, tuning: StoreTuning, write: bool,
                 timeout: float) -> list[StepResult]:
    try:
        store = open_store(remote, tuning=tuning)
    except MountdError as e:
        return [StepResult(remote.name, remote.display_url, "list", False, str(e), 0.0)]
    steps = _Steps(remote, store, timeout)

    def list_root() -> str:
        store.probe()
        listing = store.list_dir("")
        return f"{len(listing.objects)} objects, {len(listing.prefixes)} prefixes at the root"

    found: list[str | None] = []

    def read_one() -> str:
        key = _find_object(store)
        found.append(key)
        if key is None:
            return "no object to read near the root"
        data = store.read_range(key, 0, 1)
        return f"read 1 byte of {key!r}" if data else f"{key!r} read empty"

    def write_temp() -> str:
        key = f"{CHECK_PREFIX}{uuid.uuid4().hex[:12]}"
        store.put_bytes(key, b"mountd check\n", {})
        store.delete(key)
        return f"wrote and deleted {key!r}"

    def conditions() -> str:
        report = probe_conditions(store)
        if not report.enforced and remote.require_conditional:
            raise ConfigError(f"remote {remote.name!r}: require_conditional = true, but {report.describe()}")
        return report.describe()

    results = [steps.run("list", list_root)]
    if not results[0].ok:
        return results
    results.append(steps.run("read", read_one))
    if results[-1].ok and found == [None]:
        results[-1] = StepResult(remote.name, store.display_url, "read", True, results[-1].detail,
                                 results[-1].seconds, skipped=True)
    if write and remote.read_only:
        results.append(StepResult(remote.name, store.display_url, "write", True,
                                  "read_only remote: not written", 0.0, skipped=True))
    elif write:
        results.append(steps.run("write", write_temp))
        if results[-1].ok:
            results.append(steps.run("conditions", conditions))
    return results


def check_config(config: RepoConfig, *, write: bool = False, timeout: float = 15.0) -> list[StepResult]:
    """Every remote's steps, remotes probed in parallel; order follows the config."""
    tuning = StoreTuning(timeout=min(timeout, config.mount.read_timeout))
    results: dict[str, list[StepResult]] = {}

    def one(r: RemoteConfig) -> None:
        try:
            results[r.name] = check_remote(r, tuning=tuning, write=write, timeout=timeout)
        except Exception as e:  # a bug, not a remote failure: still one line naming the remote
            results[r.name] = [StepResult(r.name, r.display_url, "list", False,
                                          f"remote {r.name!r}: check failed: {type(e).__name__}", 0.0)]

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in config.remote]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # each step inside is bounded by `timeout`
    return [step for r in config.remote for step in results.get(r.name, [])]
