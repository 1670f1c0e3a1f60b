"""`IgnoreRules`: which paths under a remote stay local-only and are never uploaded.

Two sources, both in gitignore syntax (matched with `pathspec`, the library pip and black use):
the `writeback.ignore` patterns of the config, matched against the path relative to the
remote's attach point, and `.mountdignore` files in any directory of the mount, matched against
the path relative to that directory. Directories are tested with a trailing slash, so `build/`
matches a directory and everything below it.

This module never reads files itself: the owner of the namespace hands it the text of each
`.mountdignore` it finds, with a version stamp so a rewritten file is parsed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pathspec

IGNORE_FILE = ".mountdignore"
# always local-only: our own temporaries never leave the machine
BUILTIN_PATTERNS = (".mountd-tmp-*",)


class IgnoreRules:
    def __init__(self, patterns: Iterable[str]) -> None:
        self._global = pathspec.GitIgnoreSpec.from_lines([*BUILTIN_PATTERNS, *patterns])
        self._files: dict[int, tuple[object, pathspec.GitIgnoreSpec]] = {}
        self.parsed = 0

    def spec_for(self, ino: int, stamp: object, text: bytes) -> pathspec.GitIgnoreSpec:
        """The parsed `.mountdignore` of inode `ino`, parsed again only when `stamp` changed."""
        known = self._files.get(ino)
        if known is not None and known[0] == stamp:
            return known[1]
        spec = pathspec.GitIgnoreSpec.from_lines(text.decode("utf-8", "replace").splitlines())
        self._files[ino] = (stamp, spec)
        self.parsed += 1
        return spec

    def restamp(self, ino: int, old: object, new: object) -> None:
        """The content parsed under `old` is now known by `new` (an upload recorded the remote
        version of unchanged bytes), so the parsed rules stay valid once the local copy is gone."""
        known = self._files.get(ino)
        if known is not None and known[0] == old:
            self._files[ino] = (new, known[1])

    def cached_spec(self, ino: int, stamp: object) -> pathspec.GitIgnoreSpec | None:
        known = self._files.get(ino)
        return known[1] if known is not None and known[0] == stamp else None

    def matches(self, rel_to_attach: Sequence[str], is_dir: bool,
                dir_specs: Iterable[tuple[int, pathspec.GitIgnoreSpec]]) -> bool:
        """Whether the path (parts below the attach point) is ignored.

        `dir_specs` are (depth, spec) pairs: the spec of a `.mountdignore` found in the directory
        at `depth` parts below the mount root's attach point, matched against the rest of the path.
        A path is also ignored when any of its parent directories is."""
        if not rel_to_attach:
            return False
        specs = [(0, self._global), *dir_specs]
        for end in range(1, len(rel_to_attach) + 1):
            last = end == len(rel_to_attach)
            for depth, spec in specs:
                if depth >= end:
                    continue
                rel = "/".join(rel_to_attach[depth:end])
                if (not last or is_dir) and spec.match_file(rel + "/"):
                    return True
                if last and spec.match_file(rel):
                    return True
        return False
