"""Fixtures of the in-process tier: the daemon's stack without a kernel (see harness.py).

No root, no /dev/fuse, no network: the remote is a file:// directory under the test's tmp_path.
`tests/conftest.py` runs this directory first."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mountd.backend.factory import open_store, store_tuning
from mountd.fuse.ops import GIL_SWITCH_INTERVAL
from tests.inprocess.harness import InProcessMount, repo_config


@pytest.fixture(autouse=True)
def daemon_switch_interval() -> Iterator[None]:
    """The GIL hand-over interval the daemon runs with: with Python's 5 ms the test thread, the
    trio thread and the upload threads waited on each other, and the tier ran twice as long."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[Callable[..., InProcessMount]]:
    """make_mount(name="repo", wrap=None, instruments=(), **config) -> a started InProcessMount.

    The same `name` is the same remote, local tier and db (a restart); `wrap(store)` may put a
    wrapper around the real store of each remote; config keywords go to `repo_config` (delay,
    extra, writeback). Every mount is stopped after the test."""
    mounts: list[InProcessMount] = []

    def make(name: str = "repo", *, wrap=None, instruments=(), start: bool = True,
             **config) -> InProcessMount:
        cfg = repo_config(tmp_path / name, **config)
        stores = {r.name: open_store(r, tuning=store_tuning(cfg)) for r in cfg.remote}
        if wrap is not None:
            stores = {k: wrap(v) for k, v in stores.items()}
        m = InProcessMount(cfg, stores=stores, instruments=instruments)
        mounts.append(m)
        return m.start() if start else m

    yield make
    for m in mounts:
        m.stop()
