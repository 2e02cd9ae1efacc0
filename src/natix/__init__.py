"""natix: a feature-cache, two-tier training system for roadwork detection."""

__version__ = "0.1.0"


def load_bundle(path, **kwargs):
    """Load an exported bundle for serving (see `natix.serve.bundle.load_bundle`)."""
    from natix.serve.bundle import load_bundle as _load

    return _load(path, **kwargs)
