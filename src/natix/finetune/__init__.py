"""Backbone fine-tuning: what trains (PEFT LoRA/DoRA, the last blocks, or everything) and the
adapters that `natix extract` reads back (see :mod:`natix.finetune.adapters`)."""

from natix.finetune.adapters import DEFAULT_TARGETS, METHODS, AdapterSpec, attach, merged, save_adapter

__all__ = ["DEFAULT_TARGETS", "METHODS", "AdapterSpec", "attach", "merged", "save_adapter"]
