"""Image ids without re-reading unchanged files: a memo of (size, mtime, inode) → content id.

Hashing a large folder reads every byte of it; a rerun on an unchanged folder would read it all
again only to learn that nothing changed. The memo keeps, per absolute path, the file's size,
modification time (ns) and inode with the id its bytes hashed to; a file whose three values
are unchanged gets its id back without being read. A file rewritten in place gets a new mtime,
one replaced by rename a new inode; content changed with all three restored (a copy that keeps
the mtime onto the same inode) is not seen: ``--rehash`` reads every file again.

The memo is one JSON file in the cache directory (``hashes.json``), written atomically after
hashing; a missing or damaged memo only means every file is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from natix.jsonio import write_atomic

MEMO_NAME = "hashes.json"
_VERSION = 1

Stat = tuple[int, int, int]  # size, mtime_ns, inode


@dataclass(frozen=True)
class Hashed:
    """The ids of a list of files and how many were read."""

    ids: list  # per file: the content id, or the OSError that prevented reading it
    read: int  # files hashed now
    reused: int  # files whose id came from the memo


def stat_key(path) -> Stat | None:
    """(size, mtime_ns, inode) of a file, or None when it cannot be stat'ed (it is then read, and fails)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def load_memo(root: Path) -> dict[str, tuple[Stat, str]]:
    """The memo of the cache directory `root`: absolute path → (stat, id); empty when absent or unusable."""
    try:
        raw = json.loads((Path(root) / MEMO_NAME).read_text(encoding="utf-8"))
        if raw.get("version") != _VERSION:
            return {}
        return {p: ((int(s), int(m), int(i)), str(h)) for p, (s, m, i, h) in raw["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def save_memo(root: Path, memo: dict[str, tuple[Stat, str]]) -> None:
    """Write the memo atomically (best effort: a folder that cannot take it only costs a re-read later)."""
    files = {p: [*stat, h] for p, (stat, h) in sorted(memo.items())}
    try:
        write_atomic(Path(root) / MEMO_NAME, json.dumps({"version": _VERSION, "files": files},
                                                         separators=(",", ":")).encode("utf-8"))
    except OSError:
        return


def hash_with_memo(paths: list, memo: dict[str, tuple[Stat, str]], hash_files: Callable[[list], list], *,
                   rehash: bool = False) -> Hashed:
    """The id of every file in `paths`: from `memo` where (size, mtime, inode) are unchanged (unless
    `rehash`), else by `hash_files`; `memo` is updated in place with what was read."""
    keys = [os.fspath(Path(p).absolute()) for p in paths]
    stats = [stat_key(p) for p in paths]
    ids: list = [None] * len(paths)
    todo = []
    for k, (key, stat) in enumerate(zip(keys, stats)):
        known = memo.get(key)
        if not rehash and stat is not None and known is not None and known[0] == stat:
            ids[k] = known[1]
        else:
            todo.append(k)
    for k, image_id in zip(todo, hash_files([paths[k] for k in todo])):
        ids[k] = image_id
        if isinstance(image_id, str) and stats[k] is not None:
            memo[keys[k]] = (stats[k], image_id)
        else:
            memo.pop(keys[k], None)
    return Hashed(ids, read=len(todo), reused=len(paths) - len(todo))


__all__ = ["MEMO_NAME", "Hashed", "hash_with_memo", "load_memo", "save_memo", "stat_key"]
