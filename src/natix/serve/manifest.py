"""The bundle manifest: format, digest, optional signature, and reading a bundle with every hash checked.

``manifest.json`` is strict JSON written by :mod:`natix.jsonio` (a router threshold of inf is the
string ``"inf"``). Its digest is the sha256 of its canonical JSON (:func:`natix.jsonio.canonical`)
without the digest field, so a damaged manifest is refused; every other file of the bundle is
listed with its sha256.

Hashes detect damage, not malice: whoever can write the bundle can recompute them. A bundle that
travels can be signed: ``export_bundle(..., sign_key=KEY)`` adds ``"signature": {"alg":
"hmac-sha256", "value": HEX}``, an HMAC-SHA256 with the key over the canonical JSON of the
manifest without its digest and signature, and ``load_bundle(..., verify_key=KEY)`` refuses a
bundle whose signature is missing or does not match. A key is bytes, or a file whose bytes are
the key (at least 16 of them). Every field is also checked against its schema on load
(:mod:`natix.serve.schema`), signed or not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from natix import jsonio
from natix.errors import ConfigError, DataError
from natix.serve.schema import MANIFEST, as_threshold, check_manifest

__all__ = ["DIGEST_KEY", "FORMAT", "MANIFEST", "MIN_KEY_BYTES", "SIGNATURE_KEY", "digest", "is_bundle",
           "manifest_bytes", "read_key", "read_manifest", "sha256", "signature", "thresholds"]

FORMAT = "natix-bundle/1"
DIGEST_KEY = "manifest_sha256"
SIGNATURE_KEY = "signature"
MIN_KEY_BYTES = 16
_ALG = "hmac-sha256"
_REEXPORT = "re-export the bundle with this natix"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(manifest: dict) -> str:
    """The manifest's own digest: sha256 of its canonical JSON without the digest field."""
    return sha256(jsonio.canonical({k: v for k, v in manifest.items() if k != DIGEST_KEY}))


def signature(manifest: dict, key: bytes) -> dict:
    """The signature entry of `manifest`: HMAC-SHA256 with `key` over its canonical JSON without
    its digest and signature."""
    signed = jsonio.canonical({k: v for k, v in manifest.items() if k not in (DIGEST_KEY, SIGNATURE_KEY)})
    return {"alg": _ALG, "value": hmac.new(key, signed, hashlib.sha256).hexdigest()}


def manifest_bytes(manifest: dict, *, sign_key: bytes | None = None) -> bytes:
    """manifest.json's content: `manifest` with its signature (with `sign_key`) and digest added."""
    manifest = dict(manifest)
    if sign_key is not None:
        manifest[SIGNATURE_KEY] = signature(manifest, sign_key)
    return (jsonio.dumps({**manifest, DIGEST_KEY: digest(manifest)}) + "\n").encode()


def read_key(key, *, option: str) -> bytes:
    """The bytes of a signing key given as bytes or as the path of a key file (`option` names the
    argument in messages); a one-line `ConfigError` for anything else or a key under 16 bytes."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    elif isinstance(key, (str, os.PathLike)):
        try:
            data = Path(key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"key file '{key}' cannot be read ({exc.strerror or exc}): pass {option} an "
                              "existing key file") from None
    else:
        raise ConfigError(f"{option} is a {type(key).__name__}: pass bytes or a key file's path")
    if len(data) < MIN_KEY_BYTES:
        raise ConfigError(f"{option} holds {len(data)} bytes: a key needs at least {MIN_KEY_BYTES} bytes, e.g. "
                          "a file made with `head -c 32 /dev/urandom > bundle.key`")
    return data


def is_bundle(path: Path) -> bool:
    """Whether `path` holds a manifest of some natix bundle format (any version)."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format", "").startswith("natix-bundle/")
    except (OSError, ValueError, AttributeError):
        return False


def _strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def read_manifest(path: Path, *, verify_key: bytes | None = None) -> tuple[dict, dict[str, bytes]]:
    """The manifest of bundle directory `path` and the bytes of every file it lists: format, digest,
    signature (with `verify_key`), every field and every file hash checked; a one-line `DataError`
    naming the file or field otherwise."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DataError(f"'{path}' is not a natix bundle (no {MANIFEST}): pass a directory written by natix export")
    try:
        manifest = json.loads(mpath.read_bytes(), parse_constant=_strict)
    except ValueError as exc:
        raise DataError(f"bundle file {MANIFEST} is not valid JSON ({exc}): re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"bundle file {MANIFEST} has format {found!r}, not {FORMAT}: {_REEXPORT}")
    if manifest.get(DIGEST_KEY) != digest(manifest):
        raise DataError(f"bundle file {MANIFEST} was altered (its digest does not match its content): re-export "
                        "the bundle")
    if verify_key is not None:
        _verify(manifest, verify_key, path)
    check_manifest(manifest)
    return manifest, {name: _read_file(path, name, want) for name, want in manifest["files"].items()}


def _verify(manifest: dict, key: bytes, path: Path) -> None:
    """Refuse a manifest that is unsigned or whose signature is not `key`'s over its content."""
    sig = manifest.get(SIGNATURE_KEY)
    if sig is None:
        raise DataError(f"bundle '{path}' is not signed but a verify key was given: export it with "
                        "natix export --sign-key FILE (export_bundle(..., sign_key=...))")
    value = sig.get("value") if isinstance(sig, dict) else None
    if (not isinstance(sig, dict) or sig.get("alg") != _ALG or not isinstance(value, str)
            or not hmac.compare_digest(value, signature(manifest, key)["value"])):
        raise DataError(f"bundle '{path}' signature does not match the verify key: it was changed after signing "
                        "or signed with another key; re-export it with natix export --sign-key FILE")


def _read_file(path: Path, name: str, want: str) -> bytes:
    """The bytes of bundle file `name`, whose sha256 must be `want`."""
    if Path(name).name != name or name in ("", ".", "..", MANIFEST):
        raise DataError(f"bundle file name '{name}' is not a plain file name: re-export the bundle")
    try:
        data = (path / name).read_bytes()
    except FileNotFoundError:
        raise DataError(f"bundle file {name} is missing: re-export the bundle or restore the file") from None
    except OSError as exc:
        raise DataError(f"bundle file {name} is unreadable ({exc.strerror or exc}): check its permissions") from None
    got = sha256(data)
    if got != want:
        raise DataError(f"bundle file {name} was altered (sha256 {got[:12]}, the manifest says {want[:12]}): "
                        "re-export the bundle or restore the file")
    return data


def thresholds(manifest: dict) -> list[float] | None:
    """The router thresholds of a checked manifest as floats ("inf" → inf); None without a router."""
    router = manifest.get("router")
    return None if router is None else [as_threshold(t) for t in router["thresholds"]]
