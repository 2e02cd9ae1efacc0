"""The natix error hierarchy.

Every error a user can cause is a `NatixError` whose message is one line that names the
problem and the fix. The CLI prints that line and exits non-zero; anything else keeps its
traceback because it is a bug.

The input errors, `DataError` and `ConfigError` (bad data, a bad option or hyperparameter), are
also `ValueError`s, as scikit-learn and Python expect of a bad argument: ``except ValueError``
around a natix estimator catches them, and scikit-learn's estimator checks recognise them.
"""


class NatixError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class DataError(NatixError, ValueError):
    """Input data cannot be used: an image source (folder, manifest, labels), an array, a file's content."""


class DecodeError(NatixError):
    """One image cannot be decoded; recorded per image, never fatal for a run."""


class ConfigError(NatixError, ValueError):
    """An option or hyperparameter value is invalid."""


class ViewSpecError(ConfigError):
    """A view recipe is invalid (view count, grid, overlap, sizes)."""


class BackboneError(NatixError):
    """A backbone or adapter cannot be found or loaded."""


class CacheError(NatixError):
    """A feature cache is missing, unreadable, corrupt or not ours."""


class CacheLockedError(CacheError):
    """Another process holds the writer lock of a cache file."""


class FingerprintMismatchError(CacheError):
    """A cache file holds features of a different identity than the one asked for."""
