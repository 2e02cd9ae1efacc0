"""Serving: bundle export and loading, the one place that joins extraction with tier 2."""

from natix.serve.bundle import Bundle, export_bundle, load_bundle

__all__ = ["Bundle", "export_bundle", "load_bundle"]
