"""What each cloud's client accepts in a remote's `options`, checked when a config is loaded.

An option the client does not know used to pass every check and fail only inside the daemon
(`TypeError: AioSession.__init__() got an unexpected keyword argument ...`), or was silently
ignored. The accepted names are read from the clients themselves: the parameters of
`s3fs.S3FileSystem`, `gcsfs.GCSFileSystem` and `adlfs.AzureBlobFileSystem`, and of what each
hands its other keyword arguments to (fsspec's `DirCache`, aiobotocore's `AioSession`, the
keywords `DefaultAzureCredential` documents; botocore's `create_client` and `Config` for S3's
`client_kwargs` and `config_kwargs`). On top come the names the factory reads itself, and out
go the ones it sets itself. A value's type is checked where the client declares one (in its
docstring's parameters, else an annotation, else a bool, number or string default); inside
`client_kwargs` and `config_kwargs` only names are checked. The SDK of a scheme is imported only
when a remote of that scheme is checked, once per process.

`mountd.config` imports this module, so it must never import another mountd module; and it must
never quote an option's value: it may be a secret.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# what an option's value may be: TOML kinds ("bool", "int", "number", "str", "table"), None for anything
Kind = frozenset[str] | None
KIND_TEXT = {"bool": "true or false", "int": "a whole number", "number": "a number", "str": "a string",
             "table": "a table", "array": "an array", "date": "a date"}
STR, BOOL, INT, TABLE = (frozenset({k}) for k in ("str", "bool", "int", "table"))
TYPE_WORDS = {"bool": "bool", "boolean": "bool", "int": "int", "integer": "int", "float": "number",
              "str": "str", "string": "str", "dict": "table"}

FROM_READ_TIMEOUT = "mountd sets it from mount.read_timeout"
# parameters that are no option of a remote: Python objects, or how mountd runs the client
NOT_OPTIONS = frozenset({"self", "asynchronous", "loop", "session", "event_hooks", "request_session",
                         "http_session_cls", "skip_instance_cache", "use_listings_cache"})


def gcsfs_core() -> ModuleType:
    """`gcsfs.core`, imported the one way mountd imports it.

    Without the variable, importing gcsfs swaps in a variant that first asks a gRPC control API
    for the bucket type: that cannot succeed against emulators or HTTP-only proxies."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs.core

    return gcsfs.core


@dataclass(frozen=True)
class ClientOptions:
    """The options of one scheme's client: name -> kind of value, and the names inside its tables."""

    scheme: str
    names: Mapping[str, Kind]
    tables: Mapping[str, frozenset[str]] = field(default_factory=dict)
    set_by_mountd: Mapping[str, str] = field(default_factory=dict)  # name -> where its value comes from


def _kind_of_text(text: str) -> Kind:
    """The kinds a type written in a docstring or an annotation names ("None, dict or string",
    "Optional[bool]", "one of {'read_only', ...}"); None when it names none we know."""
    kinds = frozenset(TYPE_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in TYPE_WORDS)
    if not kinds and re.match(r"\s*(one of|\{|')", text):  # a choice of quoted words
        return STR
    return kinds or None


def _kind_of_default(default: Any) -> Kind:
    if isinstance(default, bool | int | str):
        return BOOL if isinstance(default, bool) else INT if isinstance(default, int) else STR
    return frozenset({"number"}) if isinstance(default, float) else None


def _documented_types(fn: Callable[..., Any]) -> dict[str, str]:
    """`name : type` lines of the numpydoc "Parameters" of a class and of its `__init__` (the first
    line for a name wins: later ones are prose)."""
    docs = [fn.__doc__ or ""]
    if isinstance(fn, type):
        docs.append(fn.__init__.__doc__ or "")  # type: ignore[misc]
    found: dict[str, str] = {}
    for m in re.finditer(r"^\s+(\w+) ?: ?(.*?)(?:\(.*)?$", "\n".join(docs), re.M):
        found.setdefault(m[1], m[2])
    return found


def _parameters(fn: Callable[..., Any]) -> dict[str, Kind]:
    """The keyword parameters of `fn` and what each takes, as its docstring, else its annotation,
    else its default says (a class: its `__init__`, as fsspec's caching metaclass hides the
    signature of the class itself)."""
    init = fn.__init__ if isinstance(fn, type) else fn  # type: ignore[misc]
    documented = _documented_types(fn)
    out: dict[str, Kind] = {}
    for p in inspect.signature(init).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in NOT_OPTIONS:
            continue
        annotation = "" if p.annotation is p.empty else str(getattr(p.annotation, "__name__", p.annotation))
        out[p.name] = (_kind_of_text(documented.get(p.name, "")) or _kind_of_text(annotation)
                       or _kind_of_default(p.default))
    return out


def _documented_keywords(cls: type) -> dict[str, Kind]:
    """`:keyword <type> <name>:` entries of a docstring, for an SDK class that takes **kwargs."""
    found = re.findall(r":keyword (?:(\w+) )?(\w+):", cls.__doc__ or "")
    return {name: _kind_of_text(t) for t, name in found}


def _s3() -> ClientOptions:
    import botocore.config
    import botocore.session
    import s3fs
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession
    from fsspec.dircache import DirCache

    # s3fs hands the DirCache names to fsspec and every other keyword to AioSession
    names = {**_parameters(s3fs.S3FileSystem), **_parameters(DirCache), **_parameters(AioSession)}
    # read by the factory: moved into client_kwargs / config_kwargs, or set on the filesystem
    names.update(region=STR, region_name=STR, path_style=BOOL, addressing_style=STR, retries=INT,
                 client_kwargs=TABLE, config_kwargs=TABLE)
    client = set(_parameters(botocore.session.Session.create_client)) - {"service_name", "config"}
    config = set(botocore.config.Config.OPTION_DEFAULTS) | set(_parameters(AioConfig))
    tables = {"client_kwargs": frozenset(client), "config_kwargs": frozenset(config)}
    return ClientOptions("s3", names, tables)


def _gcs() -> ClientOptions:
    from fsspec.asyn import AsyncFileSystem
    from fsspec.dircache import DirCache

    # gcsfs hands every keyword it does not name to fsspec's AsyncFileSystem, which gives the rest to DirCache
    names = {**_parameters(gcsfs_core().GCSFileSystem), **_parameters(AsyncFileSystem),
             **_parameters(DirCache)}
    names.update(service_account_file=STR, retries=INT)
    names.pop("requests_timeout", None)
    return ClientOptions("gs", names, set_by_mountd={"requests_timeout": FROM_READ_TIMEOUT})


def _azure() -> ClientOptions:
    import adlfs
    from azure.identity.aio import DefaultAzureCredential
    from fsspec.dircache import DirCache

    # adlfs hands the DirCache names to fsspec and every other keyword to DefaultAzureCredential
    names = {**_parameters(adlfs.AzureBlobFileSystem), **_parameters(DirCache),
             **_documented_keywords(DefaultAzureCredential)}
    set_by_mountd = dict.fromkeys(("connection_timeout", "read_timeout"), FROM_READ_TIMEOUT)
    for name in set_by_mountd:
        names.pop(name, None)
    return ClientOptions("az", names, set_by_mountd=set_by_mountd)


def _no_client(scheme: str) -> Callable[[], ClientOptions]:
    """file:// and memory:// build no client: any option would be silently ignored."""
    return lambda: ClientOptions(scheme, {})


CLIENTS: dict[str, Callable[[], ClientOptions]] = {
    "s3": _s3, "gs": _gcs, "gcs": _gcs, "az": _azure, "abfs": _azure, "abfss": _azure,
    "file": _no_client("file"), "memory": _no_client("memory"),
}


@functools.cache
def client_options(scheme: str) -> ClientOptions:
    """What the client of `scheme` accepts (derived once per process)."""
    return CLIENTS[scheme]()


def _value_kind(value: Any) -> str:
    """The TOML kind of a value as tomllib reads it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "int" if isinstance(value, int) else "number"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, str | list):
        return "str" if isinstance(value, str) else "array"
    return "date"


def _fits(kind: Kind, value: Any) -> bool:
    got = _value_kind(value)
    return kind is None or got in kind or (got == "int" and "number" in kind)


def _suggest(name: str, names: Iterable[str], hints: Iterable[str] = ()) -> str:
    """' (did you mean x?); accepted: x, a, b': the accepted names, close matches to `name` first.

    `hints` are dotted names inside tables (`client_kwargs.aws_access_key_id`): one whose last
    part is `name` is the closest match of all."""
    names = sorted(names)
    close = [h for h in hints if h.rsplit(".", 1)[-1] == name]
    close += [c for c in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if c not in close]
    guess = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"{guess}; accepted: {', '.join(close + [n for n in names if n not in close])}"


def _unknown(spec: ClientOptions, name: str) -> str:
    if name in spec.set_by_mountd:
        return f"option {name!r} cannot be set for {spec.scheme}://: {spec.set_by_mountd[name]}"
    if not spec.names:
        return f"unknown option {name!r}: {spec.scheme}:// takes no options"
    nested = [f"{table}.{n}" for table, inner in spec.tables.items() for n in sorted(inner)]
    return f"unknown option {name!r} for {spec.scheme}://{_suggest(name, spec.names, nested)}"


def _problem(spec: ClientOptions, options: Mapping[str, Any]) -> str | None:
    for name, value in options.items():
        if name not in spec.names:
            return _unknown(spec, name)
        kind = spec.names[name]
        if kind is not None and not _fits(kind, value):
            wanted = " or ".join(KIND_TEXT[k] for k in sorted(kind) if not (k == "int" and "number" in kind))
            got = KIND_TEXT[_value_kind(value)]
            return f"option {name!r} for {spec.scheme}:// must be {wanted}, not {got}"
        inner = spec.tables.get(name, frozenset())
        for key in value if name in spec.tables else ():
            if key not in inner:
                return f"unknown option '{name}.{key}' for {spec.scheme}://{_suggest(key, inner)}"
    return None


def _links_problem(options: Mapping[str, Any]) -> str | None:
    """A links remote: a table per scheme for the stores of its lines, or plain options for all of them."""
    for scheme, value in options.items():
        if not isinstance(value, Mapping):
            continue
        if scheme not in CLIENTS:
            return f"option table {scheme!r} of a links:// remote must be named after a scheme: " \
                   f"{', '.join(CLIENTS)}"
        if problem := _problem(client_options(scheme), value):
            return problem
    anywhere = {n for s in ("s3", "gs", "az") for n in client_options(s).names}
    for name, value in options.items():
        if not isinstance(value, Mapping) and name not in anywhere:
            return f"unknown option {name!r} for links:// (plain options go to the store of every line, " \
                   f"and no cloud's client takes this one){_suggest(name, anywhere)}"
    return None


def option_problem(scheme: str, options: Mapping[str, Any]) -> str | None:
    """Why the `options` of a remote of `scheme` cannot be given to its client, on one line; None if
    they can. Names only, never values."""
    if not options:
        return None
    try:
        if scheme == "links":
            return _links_problem(options)
        return _problem(client_options(scheme), options)
    except ImportError as e:
        return f"the client of {scheme}:// cannot be imported ({e.name or e}); reinstall mountd"
