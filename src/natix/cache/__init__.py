"""The feature cache: fingerprints and the HDF5 store. Imports neither torch nor `natix.extract`."""

from natix.cache.fingerprint import canonical_json, fingerprint
from natix.cache.store import FeatureCache, list_caches, open_cache, resolve_cache_root, verify_cache

__all__ = ["FeatureCache", "canonical_json", "fingerprint", "list_caches", "open_cache", "resolve_cache_root",
           "verify_cache"]
