"""What fine-tuning trains in a backbone, and how the result is saved so that extraction reads it.

A :class:`AdapterSpec` names the method:

- ``lora`` / ``dora``: PEFT low-rank adapters (DoRA adds a learned magnitude) on the target
  linear layers, by default the DINOv3 attention and MLP projections;
- ``last-k``: the last ``unfreeze_last`` transformer blocks and the final norm train, the rest
  stays frozen;
- ``full``: every backbone weight trains.

:func:`attach` makes a loaded backbone (``natix.extract.backbones.load_backbone``) trainable that
way and returns the parameters to optimise. :func:`save_adapter` writes what extraction reads
back: a PEFT ``save_pretrained`` directory for ``natix extract --adapter DIR``, or the whole
fine-tuned backbone (a ``save_pretrained`` directory for ``--backbone DIR`` with transformers, a
safetensors state dict for ``--backbone timm:NAME --checkpoint FILE``). Either way the weights
change, so the cache fingerprint changes and the frozen cache is left as it was.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

from natix.errors import ConfigError

METHODS = ("lora", "dora", "last-k", "full")
# The linear layers LoRA/DoRA adapt by default, per backbone loader: attention and MLP projections.
DEFAULT_TARGETS = {"transformers": ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
                   "timm": ("qkv", "proj", "fc1", "fc2")}
# Where each loader's model keeps its transformer blocks and its final norm.
_BLOCKS = {"transformers": ("model.layer", "norm"), "timm": ("blocks", "norm")}


@dataclass(frozen=True)
class AdapterSpec:
    """How a backbone is fine-tuned: the method and its options.

    Parameters
    ----------
    method : "lora", "dora", "last-k" or "full"
    rank, alpha, dropout : LoRA/DoRA rank r, scaling alpha (the update is scaled by alpha / r)
        and dropout on the adapter's input
    targets : names (or name suffixes) of the linear layers to adapt; None: :data:`DEFAULT_TARGETS`
    unfreeze_last : last-k: how many of the last blocks train (with the final norm)
    full_blocks : lora/dora: how many of the last blocks also train in full (PEFT's
        ``modules_to_save``, saved with the adapter), as ExPLoRA unfreezes the last block
    """

    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    unfreeze_last: int = 1
    full_blocks: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown fine-tuning method '{self.method}': pass --method one of {', '.join(METHODS)}")
        for name, low in (("rank", 1), ("unfreeze_last", 1), ("full_blocks", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) or not self.alpha > 0:
            raise ConfigError(f"lora alpha must be a positive number, got {self.alpha!r}: pass e.g. --lora-alpha 16")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout must lie in [0, 1), got {self.dropout!r}")
        if self.targets is not None:
            targets = tuple(self.targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(f"targets must be non-empty layer names, got {self.targets!r}: pass e.g. "
                                  "--targets q_proj,v_proj")
            object.__setattr__(self, "targets", targets)

    @property
    def peft(self) -> bool:
        """Whether the method trains PEFT adapters (the backbone's own weights stay frozen)."""
        return self.method in ("lora", "dora")


def attach(backbone, spec: AdapterSpec) -> list:
    """Make `backbone` (a loaded natix backbone, frozen) trainable as `spec` says; return the
    parameters to optimise. LoRA/DoRA wrap its model with PEFT in place."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    if spec.peft:
        _wrap_peft(backbone, spec)
    elif spec.method == "full":
        for p in backbone.model.parameters():
            p.requires_grad_(True)
    else:
        for module in _last_blocks(backbone, spec.unfreeze_last):
            for p in module.parameters():
                p.requires_grad_(True)
    return [p for p in backbone.parameters() if p.requires_grad]


def _wrap_peft(backbone, spec: AdapterSpec) -> None:
    """Wrap the backbone's model with LoRA/DoRA adapters on the target layers."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = spec.targets or DEFAULT_TARGETS.get(backbone.kind)
    if targets is None:
        raise ConfigError(f"no default LoRA targets for '{backbone.kind}' backbones: pass --targets with the names "
                          "of its attention and MLP linear layers")
    names = [n for n, m in backbone.model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not any(n == t or n.endswith("." + t) for n in names for t in targets):
        raise ConfigError(f"no linear layer of this backbone is named {', '.join(targets)}: pass --targets from "
                          f"its layers (e.g. {', '.join(sorted({n.rsplit('.', 1)[-1] for n in names})[:6])})")
    full = []
    if spec.full_blocks:
        if backbone.kind not in _BLOCKS:
            raise ConfigError(f"training whole blocks needs to know where '{backbone.kind}' backbones keep them: "
                              "pass --full-blocks 0")
        blocks = _BLOCKS[backbone.kind][0]
        count = len(backbone.model.get_submodule(blocks))
        if spec.full_blocks > count:
            raise ConfigError(f"{spec.full_blocks} fully trained blocks asked, the backbone has {count}: pass at most "
                              f"{count}")
        full = [f"{blocks}.{i}" for i in range(count - spec.full_blocks, count)]
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(targets),
                        use_dora=spec.method == "dora", bias="none", modules_to_save=full or None)
    backbone.model = get_peft_model(backbone.model, config)


def _last_blocks(backbone, k: int) -> list:
    """The last `k` transformer blocks of the backbone's model and its final norm."""
    where = _BLOCKS.get(backbone.kind)
    if where is None:
        raise ConfigError(f"--method last-k does not know where '{backbone.kind}' backbones keep their blocks: use "
                          "--method lora, dora or full")
    blocks = backbone.model.get_submodule(where[0])
    if k > len(blocks):
        raise ConfigError(f"--unfreeze-last {k} is more than the backbone's {len(blocks)} blocks: pass at most "
                          f"{len(blocks)}, or --method full")
    return [*list(blocks)[-k:], backbone.model.get_submodule(where[1])]


def save_adapter(backbone, spec: AdapterSpec, out: str | Path) -> dict:
    """Write what `natix extract` reads back into the folder `out`; return how to pass it.

    Returns a dict with ``option`` ("--adapter", "--backbone" or "--checkpoint") and ``path``:
    the PEFT directory for LoRA/DoRA; for last-k/full the fine-tuned backbone as a
    ``save_pretrained`` directory (transformers) or ``backbone.safetensors`` (timm).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.peft:
        backbone.model.save_pretrained(str(out))
        return {"option": "--adapter", "path": str(out)}
    if backbone.kind == "transformers":
        backbone.model.save_pretrained(str(out), safe_serialization=True)
        return {"option": "--backbone", "path": str(out)}
    from safetensors.torch import save_file

    path = out / "backbone.safetensors"
    save_file({k: v.detach().contiguous() for k, v in backbone.model.state_dict().items()}, str(path))
    return {"option": "--checkpoint", "path": str(path)}


def merged(backbone, spec: AdapterSpec):
    """The backbone with its adapters merged into the weights (what extraction with the saved
    adapter computes), for evaluating or serving the fine-tuned model in this process."""
    if spec.peft:
        backbone.model = backbone.model.merge_and_unload()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone
