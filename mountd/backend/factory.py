"""Building stores: `open_store` turns one remote's config into its store, with no network yet.

It owns how each cloud's fsspec filesystem is constructed from the remote's `options` and the
repository's tuning (timeouts, retries, multipart sizes): explicitly per remote, never from
fsspec's shared instance cache, so two remotes with different credentials never share a client.
It registers the remote's secret values before anything can log them. The options were checked
against what each client accepts when the config was loaded (`options.py`); the names it takes
itself (`region`, `path_style`, `retries`, ...) are listed there too.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
from datetime import datetime
from typing import Any

from mountd.backend import StoreTuning
from mountd.backend.azure import AzureStore
from mountd.backend.errors import Translate
from mountd.backend.files import FileStore, MemoryStore
from mountd.backend.gcs import GcsStore
from mountd.backend.links import LinksStore
from mountd.backend.options import gcsfs_core
from mountd.backend.s3 import S3Store
from mountd.backend.secrets import guard_secrets
from mountd.config import RemoteConfig, RepoConfig
from mountd.errors import RemoteError


def _gcs_filesystem_class(retries: int) -> Any:
    """gcsfs's GCSFileSystem (not the gRPC-probing ExtendedGcsFileSystem) with `retries` attempts.

    gcsfs retries every request 6 times with up to 32 s pauses and logs a traceback when it
    gives up; a mount wants a bounded wait instead (the uploader retries on its own)."""
    gcsfs_core()  # sets what gcsfs reads when it is first imported
    from gcsfs.core import GCSFileSystem
    from gcsfs.retry import retry_request

    class BoundedGCSFileSystem(GCSFileSystem):
        _request = retry_request(retries=retries)(GCSFileSystem._request.__wrapped__)

    return BoundedGCSFileSystem



def _split_root(url: str) -> str:
    return url.split("://", 1)[1]


def fast_timestamp(value: str) -> datetime:
    """botocore parses each timestamp of a response with dateutil: in a listing of 100-object
    directories that was a quarter of the daemon's CPU (py-spy, `find` over 3,000 of them). An
    S3 XML timestamp is ISO 8601 and a header's is RFC 1123, both parsed by the standard library
    ten times faster; anything else goes to botocore's own parser."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        import botocore.utils

        return botocore.utils.parse_timestamp(value)


_XML_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<([A-Za-z_][\w.:-]*)")


def error_in_200(operation_model: Any, response_dict: dict[str, Any], **kwargs: Any) -> None:
    """botocore's `_handle_200_error` (S3 may answer 200 with an <Error> body, or a body the
    network cut short) parses every S3 response body a whole second time with ElementTree just to
    read the root element: about 4 % of the daemon's samples (py-spy) while `find` listed a tree.
    The root's name is at the head of the body and a whole body ends by closing it, so this reads
    only both ends."""
    import botocore.handlers

    if response_dict.get("status_code") != 200 or not response_dict.get("body") or \
            not botocore.handlers._should_handle_200_error(operation_model, response_dict):
        return
    body = response_dict["body"]
    head = _XML_ROOT.match(body[:512])
    tail = body[-512:].rstrip()
    if head is None or head.group(1) == b"Error" or not (
            tail.endswith(b"</" + head.group(1) + b">") or tail.endswith(b"/>")):
        response_dict["status_code"] = 500  # retried as botocore's own check would have it


def _s3_session() -> Any:
    """An AioSession whose S3 clients parse timestamps and check 200 answers cheaply (above)."""
    import aiobotocore.session
    import botocore.handlers

    session = aiobotocore.session.AioSession()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
    handlers = botocore.handlers
    if hasattr(handlers, "_handle_200_error") and hasattr(handlers, "_should_handle_200_error"):
        session.unregister("before-parse.s3.*", handlers._handle_200_error)
        session.register("before-parse.s3.*", error_in_200)
    return session


def _session_kwargs(opts: dict[str, Any]) -> list[str]:
    """The options s3fs would hand to AioSession (it has no parameter for them)."""
    import inspect

    import s3fs

    known = set(inspect.signature(s3fs.S3FileSystem.__init__).parameters)
    known |= {"use_listings_cache", "listings_expiry_time", "max_paths"}  # s3fs passes these to fsspec
    return [k for k in opts if k not in known]


def _s3_filesystem(opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str]:
    import s3fs

    client_kwargs = dict(opts.pop("client_kwargs", {}))
    for k in ("endpoint_url", "region_name"):
        if k in opts:
            client_kwargs[k] = opts.pop(k)
    if "region" in opts:
        client_kwargs["region_name"] = opts.pop("region")
    t = tuning.timeout
    config_kwargs = {"connect_timeout": min(t, 10), "read_timeout": t,
                     "retries": {"max_attempts": 2, "mode": "standard"},
                     # a ranged GET may carry the whole object's checksum (rclone serve s3, MinIO):
                     # validating it would fail every range read
                     "request_checksum_calculation": "when_required",
                     "response_checksum_validation": "when_required", **opts.pop("config_kwargs", {})}
    if opts.pop("path_style", False) or opts.pop("addressing_style", "") == "path":
        config_kwargs["s3"] = {"addressing_style": "path"}
    retries = int(opts.pop("retries", 1))
    if "session" not in opts and not _session_kwargs(opts):
        # s3fs builds its own session from the names it does not know and fails on the first request
        # with the name in the message; a session made here would drop them silently instead
        opts["session"] = _s3_session()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, **opts)
    fs.retries = retries  # botocore already retries once; s3fs would add 5 rounds with pauses
    return fs, str(client_kwargs.get("endpoint_url") or "")


def _gcs_filesystem(opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str]:
    if "service_account_file" in opts:  # a path to a service-account JSON key
        opts["token"] = opts.pop("service_account_file")
    cls = _gcs_filesystem_class(int(opts.pop("retries", 2)))
    fs = cls(skip_instance_cache=True, requests_timeout=tuning.timeout, use_listings_cache=False, **opts)
    return fs, str(opts.get("endpoint_url") or "")


def _azure_filesystem(url: str, opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str, str]:
    """The adlfs filesystem and the root `container/prefix` (abfs[s]://container@account.host/path too)."""
    import adlfs

    root = _split_root(url)
    netloc, _, path = root.partition("/")
    if "@" in netloc:
        container, _, host = netloc.partition("@")
        opts.setdefault("account_name", host.split(".", 1)[0])
        if "." in host and not host.endswith(".dfs.core.windows.net"):
            opts.setdefault("account_host", host)
        root = f"{container}/{path}"
    endpoint = ""
    cs = str(opts.get("connection_string") or "")
    m = re.search(r"BlobEndpoint=([^;]+)", cs)
    if m:
        endpoint = m.group(1)
    elif opts.get("account_host"):
        endpoint = f"https://{opts['account_host']}"
    t = int(max(1, tuning.timeout))
    fs = adlfs.AzureBlobFileSystem(skip_instance_cache=True, use_listings_cache=False, connection_timeout=t,
                                   read_timeout=t, **opts)
    return fs, root, endpoint


def store_tuning(config: RepoConfig) -> StoreTuning:
    """The request timeout and multipart sizes of a repository's config."""
    wb = config.writeback
    return StoreTuning(timeout=config.mount.read_timeout, multipart_threshold=wb.multipart_threshold,
                       multipart_chunk=wb.multipart_chunk, concurrency=min(8, max(2, wb.concurrency)),
                       resume_dir=config.local_path / "uploads")


def open_store(remote: RemoteConfig, *, timeout: float | None = None,
               tuning: StoreTuning | None = None) -> Any:
    """Build the filesystem of one remote explicitly (no fsspec instance cache); no network yet."""
    tuning = tuning or StoreTuning()
    if timeout is not None:
        tuning = dataclasses.replace(tuning, timeout=timeout)
    scheme = remote.scheme
    opts = dict(remote.options)
    guard_secrets(opts)
    with Translate(remote.name, remote.display_url)("connect"):
        if scheme == "links":
            return LinksStore(remote, tuning, open_store)
        if scheme == "file":
            from fsspec.implementations.local import LocalFileSystem

            return FileStore(remote.name, remote.url, LocalFileSystem(skip_instance_cache=True),
                             "/" + _split_root(remote.url).lstrip("/"))
        if scheme == "memory":
            from fsspec.implementations.memory import MemoryFileSystem

            return MemoryStore(remote.name, remote.url, MemoryFileSystem(skip_instance_cache=True),
                               "/" + _split_root(remote.url).strip("/"))
        if scheme == "s3":
            fs, endpoint = _s3_filesystem(opts, tuning)
            return S3Store(remote.name, remote.url, fs, _split_root(remote.url), tuning, endpoint)
        if scheme in ("gs", "gcs"):
            fs, endpoint = _gcs_filesystem(opts, tuning)
            return GcsStore(remote.name, remote.url, fs, _split_root(remote.url), tuning, endpoint)
        if scheme in ("az", "abfs", "abfss"):
            fs, root, endpoint = _azure_filesystem(remote.url, opts, tuning)
            return AzureStore(remote.name, remote.url, fs, root, tuning, endpoint)
    raise RemoteError(remote.name, f"unsupported URL scheme {scheme}://")
