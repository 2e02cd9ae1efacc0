"""Serving: bundle export and loading, the one place that joins extraction with tier 2."""

from natix.serve.bundle import Bundle, load_bundle
from natix.serve.export import export_bundle

__all__ = ["Bundle", "export_bundle", "load_bundle"]
