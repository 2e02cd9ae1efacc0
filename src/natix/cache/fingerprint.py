"""Cache identity: canonical JSON of everything that changes the features, and its hash.

Batch size, device, workers and paths are deliberately absent: they change speed, not
features. A value that has no canonical JSON form raises instead of falling back to a
random or address-based key.
"""

from __future__ import annotations

import hashlib
import math

from natix.errors import CacheError
from natix.jsonio import canonical

EXTRACTOR_VERSION = 1  # bump when extraction code changes the features it writes


def canonical_json(identity: dict) -> str:
    """Sorted keys, no whitespace, finite numbers only, plain JSON types only.

    Unlike the files natix writes (:mod:`natix.jsonio`, where NaN becomes null), an identity
    refuses a value without one exact JSON form: two caches must never share a key by accident.
    """
    _check(identity, "identity")
    return canonical(identity).decode("ascii")


def _check(value, where: str) -> None:
    """Refuse anything whose JSON form would not be canonical."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CacheError(f"identity field {where} is {value}, which has no canonical form")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CacheError(f"identity field {where} has a non-string key {k!r}")
            _check(v, f"{where}.{k}")
        return
    raise CacheError(
        f"identity field {where} has type {type(value).__name__}, which cannot be hashed "
        "canonically: convert it to plain JSON values"
    )


def fingerprint(identity: dict) -> str:
    """SHA-256 (64 hex) of the canonical JSON of `identity`."""
    return hashlib.sha256(canonical_json(identity).encode("ascii")).hexdigest()
