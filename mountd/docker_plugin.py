"""`mountd docker-plugin`: Docker's volume plugin protocol (HTTP + JSON on a unix socket).

A volume names a repository config (`<config_dir>/<repo>.toml`) and optionally a directory inside
it (`docker volume create -d mountd -o repo=art -o path=models models`). Each repository is
mounted once, by a `mountd mount --require-remotes` daemon of its own at `<state_dir>/mounts/<repo>`,
when the first container needs one of its volumes. Volumes and the references Docker holds (one
per Mount: a volume name and Docker's per-mount ID, not a container ID) are kept in
`<state_dir>/volumes.json` so a restarted plugin still knows them. The plugin never deletes
repository data: removing a volume forgets the name only.

Two rules keep Docker's deadlines and make references that cannot go stale:

- **Answers never wait for uploads.** Unmount drops the reference and returns. A repository
  nobody references is unmounted by the janitor thread once its pending uploads are done (it
  stays mounted, serving `mountd status`, while a remote refuses them); after `linger` so that
  Docker's copy-up Mount and the container's own Mount share one mount.
- **References are checked against what is true.** Docker gives up an Unmount it cannot deliver
  (the plugin was down for ~15 s); the reference would then hold the repository mounted and
  refuse `volume rm` forever. A reference older than `grace` is dropped, with a log line, when
  Docker holds its mount ID in no running container (`<docker root>/containers/*/config.v2.json`)
  and no process outside the host's mount namespace has the volume's directory mounted.
  At `VolumeDriver.Remove` Docker itself has no container left on the volume, so no grace applies.
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
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any

from mountd.config import load_config
from mountd.docker_refs import Observer, State, Timing, Volume, refresh_docker_copy, under
from mountd.errors import MountdError
from mountd.sdnotify import SystemdNotifier, child_environ

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/docker/plugins/mountd.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CREATE_OPTIONS = ("repo", "path")


class VolumeError(Exception):
    """An answer Docker shows to the user as it is: one line naming the volume and the fix."""


class Mounter:
    """Starts and stops one `mountd mount` daemon per repository, through the CLI's own commands."""

    def __init__(self, options: tuple[str, ...] = ("allow_other",),
                 umount_timeout: float | None = None) -> None:
        self.options = options
        self.umount_timeout = umount_timeout

    def _run(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "mountd", *args]
        # the repository daemons are not this service's main process: they must not talk to systemd
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_environ())
        if r.returncode:
            lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"mountd {args[0]} failed"
            raise VolumeError(last.removeprefix("mountd: error: "))

    def mount(self, config: Path, mountpoint: Path) -> None:
        # --require-remotes: a remote that cannot be reached fails `docker run` with its reason,
        # instead of a container that finds an empty directory where the remote should be
        opts = ["-o", ",".join(self.options)] if self.options else []
        self._run("mount", str(config), str(mountpoint), "--require-remotes", *opts)

    def unmount(self, mountpoint: Path) -> None:
        timeout = ["--timeout", str(self.umount_timeout)] if self.umount_timeout else []
        self._run("umount", str(mountpoint), *timeout)

    def is_mounted(self, mountpoint: Path) -> bool:
        from mountd.control import socket_path
        from mountd.daemon import mounted_at

        return mounted_at(str(mountpoint)) is not None and socket_path(mountpoint).exists()

    def status(self, mountpoint: Path) -> dict[str, Any] | None:
        """The repository daemon's `status`, or None when it does not answer within a few seconds."""
        from mountd.control import ControlClientError, request

        try:
            for msg in request(str(mountpoint), "status", socket_timeout=5):
                if "result" in msg:
                    return dict(msg["result"])
        except (ControlClientError, OSError, ValueError):
            return None
        return None


class VolumeDriver:
    """The VolumeDriver operations; thread-safe (Docker may call several at once).

    Lock order: a repository's lock (held across its mount and unmount) before `_lock` (the state
    and its file, held briefly, never across a subprocess or a look at Docker)."""

    def __init__(self, config_dir: Path, state_dir: Path, mounter: Mounter | None = None,
                 observer: Observer | None = None, timing: Timing | None = None) -> None:
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.mount_root = state_dir / "mounts"
        self.timing = timing or Timing()
        self.mounter = mounter or Mounter()
        self.observer = observer or Observer("mountd", look_every=self.timing.tick)
        self._lock = threading.Lock()
        self._repo_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._released: dict[str, float] = {}  # repo -> monotonic time its last reference went
        self._waiting: set[str] = set()  # repos kept mounted for their uploads (logged once)
        self._wake = threading.Event()
        self._state_file = state_dir / "volumes.json"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = (State.load(json.loads(self._state_file.read_text())) if self._state_file.exists()
                      else State())
        for repo in list(self.state.refs):
            if self.state.refs[repo] and not self.mounter.is_mounted(self.mountpoint(repo)):
                log.info("repository %s is no longer mounted (reboot?): forgetting its %d mount IDs", repo,
                         len(self.state.refs[repo]))
                self.state.refs[repo].clear()
        for mp in self.mount_root.iterdir() if self.mount_root.is_dir() else ():
            if not self.state.refs.get(mp.name) and self.mounter.is_mounted(mp):
                # left mounted by a previous run: the janitor decides
                self._released[mp.name] = time.monotonic()
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
            raise VolumeError(f"no such mountd volume: {name!r} (create it with docker volume create "
                              f"-d mountd -o repo=NAME {name})")
        return vol

    def _volume_path(self, vol: Volume) -> Path:
        mp = self.mountpoint(vol.repo)
        return mp / vol.path if vol.path else mp

    def _mount_ids(self, vol: Volume) -> list[str]:
        return sorted(mid for v, mid in self.state.refs.get(vol.repo, {}) if v == vol.name)

    # --- references checked against the truth -------------------------------------------------

    def _stale(self, repo: str, refs: dict[tuple[str, str], float],
               grace: float) -> list[tuple[str, str, str]]:
        """The references among `refs` that nothing true backs: (volume, mount ID, why it is stale)."""
        now = time.time()
        old = {ref: since for ref, since in refs.items() if now - since >= grace}
        if not old:
            return []
        held = self.observer.held_by_docker()
        bound = self.observer.bound_roots(self.mountpoint(repo)) if self.mounter.is_mounted(
            self.mountpoint(repo)) else []
        if held is None and bound is None:
            return []  # nothing to check against: keep what Docker told us
        with self._lock:
            volumes = dict(self.state.volumes)
        stale = []
        for (vol_name, mid), since in old.items():
            if held is not None and mid in held:
                continue
            vol = volumes.get(vol_name)
            if any(vol is None or under(root, vol.path) for _, root in bound or ()):
                continue  # a container's mount namespace still has it: Docker may not have written it yet
            why = [] if held is None else ["Docker holds it in no running container"]
            if bound is not None:
                why.append(f"no container has /{vol.path if vol else ''} mounted")
            stale.append((vol_name, mid, f"{' and '.join(why)} ({now - since:.0f}s after its Mount)"))
        return stale

    def reconcile(self, repos: list[str] | None = None, grace: float | None = None) -> int:
        """Drop references that nothing backs any more (an Unmount Docker could not deliver);
        returns how many. Repositories left without references go to the janitor."""
        dropped = 0
        for repo in repos if repos is not None else list(self.state.refs):
            with self._repo_locks[repo]:
                with self._lock:
                    refs = dict(self.state.refs.get(repo, {}))
                stale = self._stale(repo, refs, self.timing.grace if grace is None else grace)
                if not stale:
                    continue
                with self._lock:
                    for vol, mid, why in stale:
                        if self.state.refs[repo].pop((vol, mid), None) is not None:
                            dropped += 1
                            log.warning("volume %s: reconciled: dropped mount ID %s of repository %s: %s; "
                                        "its Unmount never arrived (was the plugin down?)",
                                        vol, mid, repo, why)
                    if not self.state.refs[repo]:
                        self._released.setdefault(repo, time.monotonic())
                        self._wake.set()
                    self._save()
        return dropped

    # --- the janitor: idle repositories are unmounted once their uploads are done -----------

    def janitor(self, stop: threading.Event) -> None:
        """Runs in a thread until `stop`: reconciles references every `tick` and unmounts repositories
        that nobody has used for `linger` and that have no uploads left."""
        last_reconcile = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - last_reconcile >= self.timing.tick:
                    last_reconcile = time.monotonic()
                    self.reconcile()
                for repo in list(self._released):
                    self._release_if_idle(repo)
            except Exception:  # the janitor must outlive a bug in one round
                log.exception("docker plugin janitor round failed")
            tick = self.timing.tick
            wait = tick if not self._released else min(tick, self.timing.linger / 2)
            self._wake.wait(wait)
            self._wake.clear()

    def _release_if_idle(self, repo: str) -> None:
        mp = self.mountpoint(repo)
        with self._repo_locks[repo]:
            with self._lock:
                released = self._released.get(repo)
                if released is None or self.state.refs.get(repo):
                    self._released.pop(repo, None)
                    return
            if time.monotonic() - released < self.timing.linger:
                return
            if not self.mounter.is_mounted(mp):
                self._forget_release(repo)
                return
            st = self.mounter.status(mp)
            pending = int(st.get("pending_uploads") or 0) if st else 0
            if pending:
                if repo not in self._waiting:
                    self._waiting.add(repo)
                    log.info("repository %s: no container uses it, %d uploads pending: it stays mounted "
                             "until they are done (mountd status %s)", repo, pending, mp)
                return
            users = self.observer.bound_roots(mp)
            if users:
                log.warning("repository %s: no reference left but process %d still has it mounted: "
                            "not unmounting", repo, users[0][0])
                self._forget_release(repo)
                return
            log.info("repository %s: unused for %.0fs and nothing to upload: unmounting %s", repo,
                     time.monotonic() - released, mp)
            try:
                self.mounter.unmount(mp)
            except VolumeError as e:
                log.warning("repository %s: unmount failed: %s", repo, e)
            self._forget_release(repo)

    def _forget_release(self, repo: str) -> None:
        with self._lock:
            self._released.pop(repo, None)
            self._waiting.discard(repo)

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
            raise VolumeError(f"invalid path {path!r} for volume {name}: give a directory inside the "
                              "repository such as models/bert")
        return "/".join(parts)

    def remove(self, name: str) -> None:
        with self._lock:
            vol = self._volume(name)
            in_use = bool(self._mount_ids(vol))
        if in_use:
            # Docker asks only when no container of its own refers to the volume any more
            self.reconcile([vol.repo], grace=0.0)
        with self._lock:
            users = self._mount_ids(vol)
            if users:
                who = ", ".join(self.observer.names.get(mid, f"mount ID {mid}") for mid in users)
                raise VolumeError(f"volume {name} is in use by {len(users)} mount(s): {who}")
            del self.state.volumes[name]
            self._save()
        log.info("volume %s removed (the repository's data is untouched)", name)

    def mount(self, name: str, mount_id: str) -> str:
        with self._lock:
            vol = self._volume(name)
        with self._repo_locks[vol.repo]:
            mp = self.mountpoint(vol.repo)
            if not self.mounter.is_mounted(mp):
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
                self.state.refs[vol.repo][(name, mount_id)] = time.time()
                self._released.pop(vol.repo, None)
                self._waiting.discard(vol.repo)
                self._save()
        return str(target)

    def unmount(self, name: str, mount_id: str) -> None:
        """Forget the reference and answer at once: the janitor unmounts the repository when it is
        unused and its uploads are done (Docker gives an Unmount 60 s, a drain may take longer)."""
        with self._lock:
            vol = self._volume(name)
            refs = self.state.refs.get(vol.repo, {})
            refs.pop((name, mount_id), None)
            if not refs:
                self._released[vol.repo] = time.monotonic()
                self._wake.set()
            self._save()

    def path(self, name: str) -> str:
        with self._lock:
            return str(self._volume_path(self._volume(name)))

    def get(self, name: str) -> dict[str, Any]:
        with self._lock:
            vol = self._volume(name)
            mount_ids = self._mount_ids(vol)
        held = (self.observer.held_by_docker() or {}) if mount_ids else {}
        status: dict[str, Any] = {"repo": vol.repo, "path": "/" + vol.path,
                                  "in_use_by": [held.get(mid, f"mount ID {mid}") for mid in mount_ids],
                                  "mount_ids": mount_ids, "mounted": False}
        mp = self.mountpoint(vol.repo)
        if self.mounter.is_mounted(mp):
            status["mounted"] = True
            st = self.mounter.status(mp)
            if st is not None:
                status["pending_uploads"] = st.get("pending_uploads", 0)
                down = {r["name"]: r["error"] for r in st.get("remotes", []) if not r.get("reachable", True)}
                if down:
                    status["unreachable_remotes"] = down
        return {"Name": name, "Mountpoint": str(self._volume_path(vol)), "Status": status}

    def list(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"Name": v.name, "Mountpoint": str(self._volume_path(v))}
                    for v in self.state.volumes.values()]

    def summary(self) -> str:
        with self._lock:
            used = sum(1 for refs in self.state.refs.values() if refs)
            return f"{len(self.state.volumes)} volumes, {used} repositories in use"


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
        started = time.monotonic()
        try:
            body = self._body()
            req = json.loads(body) if body.strip() else {}
            if not isinstance(req, dict):
                raise VolumeError("the request body must be a JSON object")
        except (ValueError, VolumeError) as e:
            self._reply(400, {"Err": f"bad request: {e}"}, "request", started)
            return
        method = self.path.strip("/")
        try:
            answer = dispatch(self.server.driver, method, req)
        except LookupError:
            self._reply(404, {"Err": f"unknown method {method}"}, method, started)
            return
        except VolumeError as e:
            log.warning("%s %s: %s", method, req.get("Name", ""), e)
            self._reply(500, {"Err": str(e)}, method, started)
            return
        except Exception as e:  # one broken call must not stop the plugin
            log.exception("%s failed unexpectedly", method)
            self._reply(500, {"Err": f"{method} failed: {type(e).__name__}: {e}"}, method, started)
            return
        self._reply(200, answer, method, started)
        if method == "VolumeDriver.Create":
            threading.Thread(target=refresh_docker_copy, args=(str(req.get("Name")),), daemon=True).start()
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

    def _reply(self, code: int, answer: dict[str, Any], method: str, started: float) -> None:
        data = json.dumps(answer).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            log.warning("%s: Docker stopped waiting for the answer after %.1fs", method,
                        time.monotonic() - started)

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request (Docker hung up): one line, no traceback."""
        err = sys.exc_info()[1]
        log.warning("a connection from Docker failed: %s: %s", type(err).__name__, err)


class _Stop(Exception):
    pass


def serve(socket_path: Path, config_dir: Path, state_dir: Path, ready_fd: int = -1) -> None:
    """Serve until SIGTERM or SIGINT; mounts made stay up (their daemons are independent)."""
    # the driver's name is the socket's: dockerd finds /run/docker/plugins/NAME.sock as driver NAME
    timing = Timing.from_env()
    driver = VolumeDriver(config_dir, state_dir, observer=Observer(socket_path.stem, look_every=timing.tick),
                          timing=timing)
    server = PluginServer(socket_path, driver)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping = threading.Event()
    janitor = threading.Thread(target=driver.janitor, args=(stopping,), name="janitor", daemon=True)
    janitor.start()
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
        stopping.set()
        server.server_close()
        socket_path.unlink(missing_ok=True)
