"""natix: a feature-cache, two-tier training system for roadwork detection."""

__version__ = "0.1.0"
