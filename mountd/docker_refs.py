"""What the Docker volume plugin knows and checks: its volumes and references (kept in
`volumes.json`), its timings, and what is true outside it (the mount IDs Docker holds for running
containers, and the mount namespaces that have a repository bound in)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
TIMING_ENV = "MOUNTD_DOCKER_PLUGIN_TIMING"


@dataclass(frozen=True)
class Timing:
    # Docker is between its Mount and the container's first process (or a copy-up) for this long at most
    grace: float = 30.0
    # how long a repository nobody uses stays mounted: `docker run` Mounts twice in a row (copy-up check)
    linger: float = 5.0
    # how often the janitor looks at references and idle repositories when nothing wakes it
    tick: float = 10.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> Timing:
        """`MOUNTD_DOCKER_PLUGIN_TIMING=grace=2,linger=0.5,tick=0.5`: shorter waits, for tests."""
        text = environ.get(TIMING_ENV, "").strip()
        if not text:
            return cls()
        values: dict[str, float] = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            if key.strip() not in ("grace", "linger", "tick"):
                raise ValueError(f"{TIMING_ENV}: unknown name {key.strip()!r} (grace, linger, tick)")
            values[key.strip()] = float(value)
        return cls(**values)


@dataclass
class Volume:
    name: str
    repo: str
    path: str = ""  # a directory inside the repository, "" for its root


@dataclass
class State:
    volumes: dict[str, Volume] = field(default_factory=dict)
    # repo -> {(volume, Docker's mount ID): when the Mount came (epoch s)}
    refs: dict[str, dict[tuple[str, str], float]] = field(default_factory=lambda: defaultdict(dict))

    def dump(self) -> dict[str, Any]:
        return {"volumes": [asdict(v) for v in self.volumes.values()],
                "mounts": [{"repo": repo, "volume": vol, "id": mid, "since": since}
                           for repo, refs in sorted(self.refs.items())
                           for (vol, mid), since in sorted(refs.items())]}

    @classmethod
    def load(cls, data: dict[str, Any]) -> State:
        st = cls()
        for v in data.get("volumes", []):
            st.volumes[v["name"]] = Volume(**v)
        for m in data.get("mounts", []):
            st.refs[m["repo"]][(m["volume"], m["id"])] = float(m["since"])
        now = time.time()
        for repo, pairs in (data.get("users") or {}).items():  # the format before mounts had a time
            for vol, mid in pairs:
                st.refs[repo][(vol, mid)] = now
        return st


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def _docker_get(path: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> Any:
    """GET `path` of the local engine's API on its unix socket (a TCP `DOCKER_HOST` is never
    dialled): the JSON answer, or None when no engine answers there or it answers an error."""
    host = environ.get("DOCKER_HOST", "unix://" + DOCKER_SOCKET)
    if not host.startswith("unix://"):
        return None
    conn = _UnixHTTPConnection(host.removeprefix("unix://"), timeout=10)
    try:
        conn.request("GET", "/v1.24" + path)
        resp = conn.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def docker_root_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    """Docker's data root (`DockerRootDir` of `GET /info`); None when no engine answers."""
    info = _docker_get("/info", environ)
    root = info.get("DockerRootDir") if isinstance(info, dict) else None
    return Path(root) if isinstance(root, str) and root else None


def refresh_docker_copy(name: str) -> bool:
    """Have Docker look the volume up once, after it created it.

    Docker keeps a copy of each volume it created, made from the Create call (which carries no
    path), and gives each new container that copy's path as the volume's `Source`: the first
    containers would show `"Source": ""` in `docker inspect`. A `GET /volumes/NAME` replaces the
    copy with one made from the plugin's Get, which has the path. It waits for Docker's lock on
    the name, so it must run after the plugin answered Create (in a thread of its own)."""
    ok = _docker_get(f"/volumes/{name}") is not None
    log.debug("volume %s: Docker's copy %s", name,
              "refreshed" if ok else "not refreshed (no engine answered)")
    return ok


class Observer:
    """What is true outside the plugin: the mount IDs Docker holds for running containers, and the
    mount namespaces (containers) that have a repository's directories mounted."""

    def __init__(self, driver_name: str, docker_root: Path | None = None, look_every: float = 10.0) -> None:
        self.driver_name = driver_name
        self._docker_root = docker_root
        self._look_every = look_every
        self._looked_up = -look_every
        self.names: dict[str, str] = {}  # mount ID -> "container NAME (ID)", from the last look at Docker

    def docker_root(self) -> Path | None:
        if self._docker_root is None and time.monotonic() - self._looked_up >= self._look_every:
            self._looked_up = time.monotonic()
            self._docker_root = docker_root_dir()
            default = Path("/var/lib/docker")
            if (self._docker_root is None and "DOCKER_HOST" not in os.environ
                    and (default / "containers").is_dir()):
                self._docker_root = default  # the engine is not up yet, or not answering
            if self._docker_root is not None:
                log.info("Docker's state is in %s: references are checked against it", self._docker_root)
        return self._docker_root

    def held_by_docker(self) -> dict[str, str] | None:
        """Mount ID -> the running container that holds it; None when Docker's state cannot be read."""
        root = self.docker_root()
        containers = root / "containers" if root else None
        if containers is None or not containers.is_dir():
            return None
        held: dict[str, str] = {}
        for config in containers.glob("*/config.v2.json"):
            try:
                data = json.loads(config.read_bytes())
            except (OSError, ValueError):
                continue  # removed meanwhile (Docker writes these files atomically)
            st = data.get("State") or {}
            if not (st.get("Running") or st.get("Paused") or st.get("Restarting")):
                continue
            who = f"container {str(data.get('Name') or '').lstrip('/')} ({str(data.get('ID') or '')[:12]})"
            for mp in (data.get("MountPoints") or {}).values():
                if mp.get("Driver") == self.driver_name and mp.get("ID"):
                    held[str(mp["ID"])] = who
        self.names = dict(held)
        return held

    @staticmethod
    def bound_roots(mountpoint: Path) -> list[tuple[int, str]] | None:
        """(pid, directory of the repository) for each mount namespace other than ours that has the
        repository's FUSE mount bound in: a container's volume. None when that cannot be known."""
        from mountd.daemon import mounted_at

        device = mounted_at(str(mountpoint))
        if device is None:
            return []
        try:
            seen = {os.readlink("/proc/self/ns/mnt")}
        except OSError:
            return None
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ns = os.readlink(f"/proc/{pid}/ns/mnt")
                if ns in seen:
                    continue
                with open(f"/proc/{pid}/mountinfo") as f:
                    lines = f.readlines()
            except OSError:
                continue  # exited, or a kernel thread
            seen.add(ns)
            for line in lines:
                fields = line.split()
                if len(fields) > 4 and fields[2] == device and unescape(fields[4]) != str(mountpoint):
                    found.append((int(pid), unescape(fields[3])))
        return found


def unescape(field_: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def under(root: str, path: str) -> bool:
    """Whether the repository directory `root` (as mountinfo shows it) is `path` or below it."""
    base = "/" + path if path else "/"
    return root == base or root.startswith(base.rstrip("/") + "/")
