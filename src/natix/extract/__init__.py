"""Tier 1: views, backbones, the one featurizer (images → ``[B, V, D]``) and the batched extractor."""

from natix.extract.featurizer import Featurizer

__all__ = ["Featurizer"]
