"""`mountd docker-plugin`: Docker's volume plugin protocol (HTTP + JSON on a unix socket).

A volume names a repository config (`<config_dir>/<repo>.toml`) and optionally a directory inside
it (`docker volume create -d mountd -o repo=art -o path=models models`). Each repository is
mounted once, by a `mountd mount` daemon of its own at `<state_dir>/mounts/<repo>`, when the first
container needs one of its volumes, and unmounted (draining pending uploads) when the last
container lets go: the reference count is the set of (volume, container ID) pairs Docker gave
in Mount and took back in Unmount. Volumes and references are kept in `<state_dir>/volumes.json`
so a restarted plugin still knows them. The plugin never deletes repository data: removing a
volume forgets the name only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any

from mountd.config import load_config
from mountd.errors import MountdError
from mountd.sdnotify import SystemdNotifier, child_environ

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/docker/plugins/mountd.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CREATE_OPTIONS = ("repo", "path")


class VolumeError(Exception):
    """An answer Docker shows to the user as it is: one line naming the volume and the fix."""


@dataclass
class Volume:
    name: str
    repo: str
    path: str = ""  # a directory inside the repository, "" for its root


@dataclass
class State:
    volumes: dict[str, Volume] = field(default_factory=dict)
    users: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))  # repo -> (vol, id)

    def dump(self) -> dict[str, Any]:
        return {"volumes": [asdict(v) for v in self.volumes.values()],
                "users": {repo: sorted(map(list, u)) for repo, u in self.users.items() if u}}

    @classmethod
    def load(cls, data: dict[str, Any]) -> State:
        st = cls()
        for v in data.get("volumes", []):
            st.volumes[v["name"]] = Volume(**v)
        for repo, pairs in (data.get("users") or {}).items():
            st.users[repo] = {(vol, cid) for vol, cid in pairs}
        return st


class Mounter:
    """Starts and stops one `mountd mount` daemon per repository, through the CLI's own commands."""

    def __init__(self, options: tuple[str, ...] = ("allow_other",), umount_timeout: float | None = None) -> None:
        self.options = options
        self.umount_timeout = umount_timeout

    def _run(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "mountd", *args]
        # the repository daemons are not this service's main process: they must not talk to systemd
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_environ())
        if r.returncode:
            lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
            raise VolumeError((lines[-1] if lines else f"mountd {args[0]} failed").removeprefix("mountd: error: "))

    def mount(self, config: Path, mountpoint: Path) -> None:
        opts = ["-o", ",".join(self.options)] if self.options else []
        self._run("mount", str(config), str(mountpoint), *opts)

    def unmount(self, mountpoint: Path) -> None:
        timeout = ["--timeout", str(self.umount_timeout)] if self.umount_timeout else []
        self._run("umount", str(mountpoint), *timeout)

    def is_mounted(self, mountpoint: Path) -> bool:
        from mountd.control import socket_path
        from mountd.daemon import mounted_at

        return mounted_at(str(mountpoint)) is not None and socket_path(mountpoint).exists()


class VolumeDriver:
    """The VolumeDriver operations; thread-safe (Docker may call several at once)."""

    def __init__(self, config_dir: Path, state_dir: Path, mounter: Mounter | None = None) -> None:
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.mount_root = state_dir / "mounts"
        self.mounter = mounter or Mounter()
        self._lock = threading.Lock()  # guards the state and its file; held briefly
        self._repo_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)  # held across (un)mounts
        self._state_file = state_dir / "volumes.json"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = State.load(json.loads(self._state_file.read_text())) if self._state_file.exists() else State()
        for repo in list(self.state.users):
            if self.state.users[repo] and not self.mounter.is_mounted(self.mountpoint(repo)):
                log.info("repository %s is no longer mounted (reboot?): forgetting its %d users", repo,
                         len(self.state.users[repo]))
                self.state.users[repo].clear()
        self._save()

    def mountpoint(self, repo: str) -> Path:
        return self.mount_root / repo

    def _save(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.dump(), indent=1))
        os.replace(tmp, self._state_file)

    def _volume(self, name: str) -> Volume:
        vol = self.state.volumes.get(name)
        if vol is None:
            raise VolumeError(f"no such mountd volume: {name!r} (create it with docker volume create -d mountd "
                              f"-o repo=NAME {name})")
        return vol

    def _volume_path(self, vol: Volume) -> Path:
        mp = self.mountpoint(vol.repo)
        return mp / vol.path if vol.path else mp

    def _mounted_path(self, vol: Volume) -> str:
        return str(self._volume_path(vol)) if self.state.users.get(vol.repo) else ""

    # --- the protocol's operations -------------------------------------------------------------

    def create(self, name: str, opts: dict[str, str]) -> None:
        if not NAME_RE.fullmatch(name or ""):
            raise VolumeError(f"invalid volume name {name!r}")
        unknown = sorted(set(opts) - set(CREATE_OPTIONS))
        if unknown:
            raise VolumeError(f"unknown option {unknown[0]!r} for volume {name}: mountd volumes take "
                              "-o repo=NAME (a config in " + str(self.config_dir) + ") and -o path=DIR")
        repo = opts.get("repo", "")
        if not repo:
            raise VolumeError(f"volume {name} needs -o repo=NAME (a config {self.config_dir}/NAME.toml)")
        if not NAME_RE.fullmatch(repo):
            raise VolumeError(f"invalid repo name {repo!r} for volume {name}")
        path = self._clean_path(name, opts.get("path", ""))
        config = self.config_dir / f"{repo}.toml"
        try:
            load_config(config)
        except MountdError as e:
            raise VolumeError(f"volume {name}: {e}") from None
        vol = Volume(name=name, repo=repo, path=path)
        with self._lock:
            old = self.state.volumes.get(name)
            if old is not None and old != vol:
                raise VolumeError(f"volume {name} already exists with repo={old.repo} path={old.path or '/'}")
            self.state.volumes[name] = vol
            self._save()
        log.info("volume %s created: repository %s, path /%s", name, repo, path)

    @staticmethod
    def _clean_path(name: str, path: str) -> str:
        parts = [p for p in PurePosixPath(path).parts if p != "/"]
        if any(p in (".", "..") for p in parts) or any(len(p.encode()) > 255 for p in parts):
            raise VolumeError(f"invalid path {path!r} for volume {name}: give a directory inside the repository "
                              "such as models/bert")
        return "/".join(parts)

    def remove(self, name: str) -> None:
        with self._lock:
            vol = self._volume(name)
            users = sorted(cid for v, cid in self.state.users.get(vol.repo, ()) if v == name)
            if users:
                raise VolumeError(f"volume {name} is in use by {len(users)} container(s): {', '.join(users)}")
            del self.state.volumes[name]
            self._save()
        log.info("volume %s removed (the repository's data is untouched)", name)

    def mount(self, name: str, container: str) -> str:
        with self._lock:
            vol = self._volume(name)
        with self._repo_locks[vol.repo]:
            mp = self.mountpoint(vol.repo)
            with self._lock:
                needs_mount = not self.state.users.get(vol.repo)
            if needs_mount and not self.mounter.is_mounted(mp):
                mp.mkdir(parents=True, exist_ok=True)
                log.info("mounting repository %s at %s for volume %s", vol.repo, mp, name)
                self.mounter.mount(self.config_dir / f"{vol.repo}.toml", mp)
            target = self._volume_path(vol)
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VolumeError(f"volume {name}: cannot create /{vol.path} in repository {vol.repo}: "
                                  f"{e.strerror}") from None
            with self._lock:
                self.state.users[vol.repo].add((name, container))
                self._save()
        return str(target)

    def unmount(self, name: str, container: str) -> None:
        with self._lock:
            vol = self._volume(name)
        with self._repo_locks[vol.repo]:
            with self._lock:
                users = self.state.users.get(vol.repo, set())
                users.discard((name, container))
                last = not users
                self._save()
            mp = self.mountpoint(vol.repo)
            if last and self.mounter.is_mounted(mp):
                log.info("last container left repository %s: unmounting %s", vol.repo, mp)
                self.mounter.unmount(mp)

    def path(self, name: str) -> str:
        with self._lock:
            return self._mounted_path(self._volume(name))

    def get(self, name: str) -> dict[str, Any]:
        with self._lock:
            vol = self._volume(name)
            containers = sorted(cid for v, cid in self.state.users.get(vol.repo, ()) if v == name)
            return {"Name": name, "Mountpoint": self._mounted_path(vol),
                    "Status": {"repo": vol.repo, "path": "/" + vol.path, "containers": containers,
                               "mounted": bool(self.state.users.get(vol.repo))}}

    def list(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"Name": v.name, "Mountpoint": self._mounted_path(v)} for v in self.state.volumes.values()]

    def summary(self) -> str:
        with self._lock:
            mounted = sum(1 for u in self.state.users.values() if u)
            return f"{len(self.state.volumes)} volumes, {mounted} repositories mounted"


def dispatch(driver: VolumeDriver, method: str, req: dict[str, Any]) -> dict[str, Any]:
    """One protocol call: method name (e.g. "VolumeDriver.Mount") and its JSON request -> JSON answer."""
    name = str(req.get("Name") or "")
    if method == "Plugin.Activate":
        return {"Implements": ["VolumeDriver"]}
    if method == "VolumeDriver.Capabilities":
        return {"Capabilities": {"Scope": "local"}}
    if method == "VolumeDriver.Create":
        opts = req.get("Opts") or {}
        if not isinstance(opts, dict):
            raise VolumeError("Opts must be an object")
        driver.create(name, {str(k): str(v) for k, v in opts.items()})
        return {"Err": ""}
    if method == "VolumeDriver.Remove":
        driver.remove(name)
        return {"Err": ""}
    if method == "VolumeDriver.Mount":
        return {"Mountpoint": driver.mount(name, str(req.get("ID") or "")), "Err": ""}
    if method == "VolumeDriver.Unmount":
        driver.unmount(name, str(req.get("ID") or ""))
        return {"Err": ""}
    if method == "VolumeDriver.Path":
        return {"Mountpoint": driver.path(name), "Err": ""}
    if method == "VolumeDriver.Get":
        return {"Volume": driver.get(name), "Err": ""}
    if method == "VolumeDriver.List":
        return {"Volumes": driver.list(), "Err": ""}
    raise LookupError(method)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PluginServer

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        try:
            body = self._body()
            req = json.loads(body) if body.strip() else {}
            if not isinstance(req, dict):
                raise VolumeError("the request body must be a JSON object")
        except (ValueError, VolumeError) as e:
            self._reply(400, {"Err": f"bad request: {e}"})
            return
        method = self.path.strip("/")
        try:
            answer = dispatch(self.server.driver, method, req)
        except LookupError:
            self._reply(404, {"Err": f"unknown method {method}"})
            return
        except VolumeError as e:
            log.warning("%s %s: %s", method, req.get("Name", ""), e)
            self._reply(500, {"Err": str(e)})
            return
        except Exception as e:  # one broken call must not stop the plugin
            log.exception("%s failed unexpectedly", method)
            self._reply(500, {"Err": f"{method} failed: {type(e).__name__}: {e}"})
            return
        self._reply(200, answer)
        if method not in ("Plugin.Activate", "VolumeDriver.Capabilities", "VolumeDriver.Get",
                          "VolumeDriver.List", "VolumeDriver.Path"):
            self.server.notifier.send(f"STATUS={self.server.driver.summary()}")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, code: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "docker"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the signature http.server calls)
        log.debug("%s", format % args)


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, driver: VolumeDriver) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        self.driver = driver
        self.notifier = SystemdNotifier()


class _Stop(Exception):
    pass


def serve(socket_path: Path, config_dir: Path, state_dir: Path, ready_fd: int = -1) -> None:
    """Serve until SIGTERM or SIGINT; mounts made stay up (their daemons are independent)."""
    driver = VolumeDriver(config_dir, state_dir)
    server = PluginServer(socket_path, driver)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("docker volume plugin on %s (configs in %s, state in %s)", socket_path, config_dir, state_dir)
    if ready_fd >= 0:
        os.write(ready_fd, b"READY\n")
        os.close(ready_fd)
    server.notifier.send("READY=1", f"STATUS={driver.summary()}")
    try:
        server.serve_forever()
    except _Stop:
        log.info("stopping; mounted repositories stay mounted")
        server.notifier.send("STOPPING=1")
    finally:
        server.server_close()
        socket_path.unlink(missing_ok=True)
