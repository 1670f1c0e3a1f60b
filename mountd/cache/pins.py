"""`PinSet`: which parts of the mount are pinned, and which object version is held for each.

A pin is a mount path and the (remote, key) targets it covers: one target is a key, which also
covers every key below it ("models" covers "models/a.pt"), or "" for a whole remote. The
pinned chunks live in the pinned `TierStore`; this records, per pinned object, the chunk base
held for it, so an unpin or a new object version drops exactly the chunks nothing needs any
more. Persisted in a `diskcache.Index` under the local tier; its calls are quick SQLite calls
made on the trio thread. It never fetches or deletes chunks itself.
"""

from __future__ import annotations

from pathlib import Path

import diskcache

_RULE = "rule:"
_OBJ = "obj:"


def covers(target: tuple[str, str], remote: str, key: str) -> bool:
    t_remote, t_key = target
    return t_remote == remote and (t_key == "" or key == t_key or key.startswith(t_key + "/"))


class PinSet:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._index = diskcache.Index(str(directory))
        self.rules: dict[str, tuple[tuple[str, str], ...]] = {}
        self.objects: dict[tuple[str, str], str] = {}  # (remote, key) -> chunk base held for it
        for name, value in self._index.items():
            if name.startswith(_RULE):
                self.rules[name[len(_RULE):]] = tuple((str(r), str(k)) for r, k in value)
            elif name.startswith(_OBJ):
                remote, key = name[len(_OBJ):].split("\0", 1)
                self.objects[(remote, key)] = str(value)

    def add(self, path: str, targets: list[tuple[str, str]]) -> None:
        self.rules[path] = tuple(targets)
        self._index[_RULE + path] = [list(t) for t in targets]

    def remove(self, path: str) -> bool:
        """Drop the pin of `path` and the records of objects no other pin covers."""
        if self.rules.pop(path, None) is None:
            return False
        self._index.pop(_RULE + path, None)
        for remote, key in [k for k in self.objects if not self.covers(*k)]:
            del self.objects[(remote, key)]
            self._index.pop(f"{_OBJ}{remote}\0{key}", None)
        return True

    def covers(self, remote: str, key: str) -> bool:
        return any(covers(t, remote, key) for targets in self.rules.values() for t in targets)

    def note_object(self, remote: str, key: str, base: str) -> str | None:
        """Record the chunk base held for an object; returns the base it replaces, if any."""
        old = self.objects.get((remote, key))
        if old == base:
            return None
        self.objects[(remote, key)] = base
        self._index[f"{_OBJ}{remote}\0{key}"] = base
        return old

    def needed_bases(self) -> set[str]:
        return set(self.objects.values())

    def describe(self) -> list[dict[str, object]]:
        return [{"path": path, "objects": sum(1 for o in self.objects if any(covers(t, *o) for t in targets))}
                for path, targets in sorted(self.rules.items())]

    def close(self) -> None:
        self._index.cache.close()
