"""Image sources: a class-folder tree, a plain folder, or a CSV/JSONL manifest.

Every source becomes a sorted list of `ImageRecord`s. Labels are 1 (roadwork), 0 (no
roadwork) or None (unknown, allowed for inference). A folder that holds a `labels.csv`,
`manifest.csv` or `manifest.jsonl` is read as that manifest. A manifest names files under its
own folder unless the caller allows more (`allow_outside`): a manifest that came with a data set
should not be able to make natix read any file the user can read.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from natix.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
CLASS_DIRS = {"roadwork": 1, "1": 1, "no_roadwork": 0, "0": 0}
LABEL_WORDS = {"1": 1, "0": 0, "roadwork": 1, "no_roadwork": 0, "": None}
MANIFEST_NAMES = ("labels.csv", "manifest.csv", "manifest.jsonl")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source: where it is, and what is known about it."""

    path: Path
    label: int | None = None
    group: str | None = None


def discover(source: str | os.PathLike, *, allow_outside: bool = False) -> list[ImageRecord]:
    """Resolve a folder or manifest into records sorted by path.

    A folder's images include its broken symbolic links (dangling or looping): they are files
    the user meant to have, and :func:`hash_files` says why they cannot be read.
    `allow_outside` lets a manifest name files outside its own folder (see :func:`read_manifest`).
    Raises `DataError` when the source is missing, empty, or its manifest is wrong.
    """
    root = Path(source)
    if not root.exists():
        raise DataError(f"data path '{root}' does not exist: pass a folder of images or a CSV/JSONL manifest")
    if root.is_file():
        records = read_manifest(root, allow_outside=allow_outside)
    else:
        manifest = next((root / n for n in MANIFEST_NAMES if (root / n).is_file()), None)
        if manifest is not None:
            records = read_manifest(manifest, allow_outside=allow_outside)
        else:
            records = _read_folder(root)
    if not records:
        raise DataError(
            f"no images found in '{root}': add .jpg/.png files, class folders roadwork/ and "
            "no_roadwork/ (or 1/ and 0/), or a labels.csv manifest"
        )
    return sorted(records, key=lambda r: str(r.path))


def _read_folder(root: Path) -> list[ImageRecord]:
    """Class subfolders when present, otherwise every image below `root`, unlabeled."""
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in CLASS_DIRS]
    if class_dirs:
        records = [ImageRecord(p, CLASS_DIRS[d.name]) for d in class_dirs for p in images_below(d)]
        ignored = [p for p in images_below(root) if not any(d in p.parents for d in class_dirs)]
        if ignored:
            log.warning("ignoring %d images outside the class folders of %s (first: %s)",
                        len(ignored), root, ignored[0])
        return records
    return [ImageRecord(p) for p in images_below(root)]


def images_below(root: Path) -> list[Path]:
    """Image files below `root`, recursively, skipping hidden entries.

    Broken symbolic links (dangling, or a loop) with an image suffix are listed too, so that
    reading them fails with a reason rather than the image silently missing.
    """
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or _is_broken_link(p))
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _is_broken_link(p: Path) -> bool:
    """A symbolic link whose target cannot be reached (missing, or the links loop)."""
    return p.is_symlink() and not p.exists()


def read_manifest(path: Path, *, allow_outside: bool = False) -> list[ImageRecord]:
    """Read a CSV (header with `path`, optional `label`, `group`) or JSONL manifest.

    Paths are relative to the manifest's folder unless absolute. A path that leaves that folder
    (``..`` or an absolute path elsewhere; symbolic links inside the folder are not followed for
    this) is refused, before it is looked at, unless `allow_outside`.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise DataError(f"manifest '{path}' is neither .csv nor .jsonl: rename it or pass a folder")
    try:
        rows = list(_csv_rows(path) if suffix == ".csv" else _jsonl_rows(path))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"manifest '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise DataError(f"manifest '{path}' is not a readable CSV ({exc}): check its quoting") from None
    records = []
    for line, row in rows:
        raw = row.get("path")
        if raw is None or str(raw).strip() == "":
            raise DataError(f"{path}:{line}: empty path: every row needs a path")
        p = Path(str(raw).strip())
        p = p if p.is_absolute() else path.parent / p
        label = _parse_label(row.get("label"), path, line)
        group = row.get("group")
        group = None if group is None or str(group).strip() == "" else str(group).strip()
        records.append((line, raw, ImageRecord(p, label, group)))
    if not allow_outside:
        _refuse_outside(path, records)
    _refuse_missing(path, records)
    return [record for _, _, record in records]


def _refuse_outside(manifest: Path, rows: list) -> None:
    """DataError for (line, raw path, record) rows whose path leaves the manifest's folder."""
    folder = os.path.abspath(manifest.parent)  # abspath: normalised, links not followed
    outside = [(line, raw) for line, raw, r in rows
               if os.path.commonpath([folder, os.path.abspath(r.path)]) != folder]
    if outside:
        line, raw = outside[0]
        raise DataError(
            f"manifest '{manifest}' names {len(outside)} path(s) outside its folder (first: line {line} '{raw}'): "
            f"move those images under {folder}, or pass --allow-outside (allow_outside=True) if you trust "
            "the manifest"
        )


def _refuse_missing(manifest: Path, rows: list) -> None:
    """DataError for (line, raw path, record) rows that name no file."""
    missing = [(line, raw, r.path) for line, raw, r in rows if not r.path.is_file()]
    if missing:
        line, raw, p = missing[0]
        what = ", a broken symbolic link" if p.is_symlink() else ""
        raise DataError(
            f"manifest '{manifest}' names {len(missing)} missing file(s) (first: line {line} '{raw}'{what}): "
            "fix the paths (relative to the manifest's folder) or remove those rows"
        )


def _csv_rows(path: Path):
    """(line number, row dict) for each CSV data row; the header must name `path`."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise DataError(f"manifest '{path}' has no 'path' column: add a header line 'path,label[,group]'")
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path):
    """(line number, object) for each non-empty JSONL line."""
    with open(path, encoding="utf-8-sig") as fh:  # tolerate a BOM, as for CSV
        for n, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg}): write one object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with 'path', got {type(row).__name__}")
            yield n, row


def _parse_label(value, path: Path, line: int) -> int | None:
    """0/1/roadwork/no_roadwork/empty → 0, 1 or None."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return None
    key = str(value).strip().lower()
    if key in ("1.0", "0.0"):
        key = key[0]
    if key not in LABEL_WORDS:
        raise DataError(
            f"{path}:{line}: label '{value}' is not 0, 1, roadwork or no_roadwork: "
            "fix it, or leave it empty for an unlabeled image"
        )
    return LABEL_WORDS[key]


def hash_bytes(data: bytes) -> str:
    """The image id: SHA-256 of the encoded file's bytes, as 64 hex characters."""
    return hashlib.sha256(data).hexdigest()


def hash_files(paths: list[Path], *, threads: int = 4) -> list[str | Exception]:
    """Content id of each file, or the `OSError` that prevented reading it (order kept).

    A broken symbolic link's error says so (``broken symbolic link to 'TARGET'``, plus
    ``(the links form a loop)`` for a loop) in its `strerror`.
    """

    def one(p: Path):
        try:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        except OSError as exc:
            return _broken_link_error(p, exc) or exc

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, paths))


def _broken_link_error(p: Path, exc: OSError) -> OSError | None:
    """An OSError naming the target when `p` is a broken symbolic link, else None."""
    if exc.errno not in (errno.ENOENT, errno.ELOOP) or not _is_broken_link(p):
        return None
    try:
        target = os.readlink(p)
    except OSError:
        return None
    loop = " (the links form a loop)" if exc.errno == errno.ELOOP else ""
    return OSError(exc.errno, f"broken symbolic link to '{target}'{loop}", str(p))
