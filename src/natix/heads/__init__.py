"""Tier 2: heads and view aggregators trained from the feature cache (never imports extract)."""

from natix.heads.registry import create_aggregator, create_head, list_aggregators, list_heads

__all__ = ["create_aggregator", "create_head", "list_aggregators", "list_heads"]
