"""Backbone loading: transformers DINOv3 (Hub id or local directory), timm, PEFT adapters.

Every loader returns a `Backbone`: an ``nn.Module`` in ``eval()`` mode mapping normalised
pixels ``[B, 3, S, S]`` to pooled features ``[B, D]``, together with the identity fields that
enter the cache fingerprint (weight hashes, architecture, pooling), never a path.

Spec grammar for ``--backbone``:

- ``facebook/dinov3-vitl16-pretrain-lvd1689m``: a Hub id, loaded with ``DINOv3ViTModel``
  (gated on the Hub: accept the licence, ``huggingface-cli login``, or download once and
  pass the directory). It loads from the local Hub cache when it is there; otherwise the Hub
  is tried once, without retries: offline (``HF_HUB_OFFLINE=1``) or with the Hub unreachable,
  an uncached id fails at once naming the ``--backbone PATH`` fix;
- ``/path/to/dir``: a local directory saved with ``save_pretrained`` (config.json + weights);
- ``timm:vit_large_patch16_dinov3``: a timm architecture, pretrained weights from the Hub,
  or from ``--checkpoint FILE`` (.safetensors, or a torch checkpoint read with
  ``weights_only=True``);
- ``timm:local-dir:/path`` / ``timm:hf-hub:org/name``: timm's own folder/Hub formats;
- ``LOADER:NAME``: any loader registered with :func:`register_loader` (``transformers:`` may
  be written too; a spec without a registered prefix goes to the transformers loader).

A loader is one function ``fn(name, *, checkpoint) -> LoadedModel`` registered under its
name; the name enters the identity (``identity["loader"]``), so caches of two loaders never
mix.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from natix.config import POOLS
from natix.errors import BackboneError
from natix.registry import Registry

log = logging.getLogger(__name__)

_ADAPTER_KEYS = {"peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "rank_pattern",
                 "alpha_pattern", "fan_in_fan_out", "layers_to_transform", "layers_pattern", "exclude_modules",
                 "modules_to_save", "bias"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# Config keys that describe where a model came from, not what it computes.
_CONFIG_NOISE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
                 "_attn_implementation_autoset", "_commit_hash", "out_features", "out_indices", "stage_names",
                 "_out_features", "_out_indices", "id2label", "label2id", "problem_type", "return_dict",
                 "output_hidden_states", "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder",
                 "initializer_range", "drop_path_rate", "attention_dropout", "reshape_hidden_states"}


def hash_tensors(named) -> str:
    """SHA-256 over ``(name, dtype, shape, bytes)`` of tensors, sorted by name.

    `named` is an iterable of ``(name, tensor)``. Bytes come from contiguous CPU copies, so
    the hash depends on values only, not on device, strides, file names or file layout.
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
        h.update(b"\0")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """What a backbone loader returns: the model and how to read its tokens.

    ``tokens(model, pixels [B, 3, S, S]) -> [B, N, width]`` gives the final tokens (after the
    last norm): ``n_prefix`` of them (CLS first, then registers) before the patch tokens.
    ``arch`` is the architecture part of the identity (plain JSON, no path). ``patch_embed``
    is the dotted name of the patch-embedding convolution inside `model` (None if it has
    none), where the featurizer may fold the input normalisation.
    """

    model: object
    arch: dict
    n_prefix: int
    width: int
    tokens: Callable
    patch_embed: str | None = None


LOADERS = Registry("backbone loader", error=BackboneError,
                   hint=" as LOADER:NAME, or a Hub id or local directory for transformers")
register_loader = LOADERS.register
_LOADER_PREFIX = re.compile(r"^([A-Za-z][\w-]*):(.*)$")


@functools.lru_cache(maxsize=1)
def _backbone_module():
    import torch

    class Backbone(torch.nn.Module):
        """Pools a ViT's final tokens: CLS, or CLS concatenated with the mean patch token."""

        def __init__(self, loaded: LoadedModel, *, kind: str, pool: str):
            super().__init__()
            self.model = loaded.model
            self.kind = kind  # the loader's registered name
            self.n_prefix = loaded.n_prefix  # CLS + register tokens before the patch tokens
            self.pool = pool
            self.dim = loaded.width * (2 if pool == "cls+mean" else 1)
            self._tokens = loaded.tokens
            self._patch_embed = loaded.patch_embed

        def tokens(self, pixels):
            return self._tokens(self.model, pixels)

        def patch_embedding(self):
            """The patch-embedding convolution, or None when the loader named none."""
            if self._patch_embed is None:
                return None
            try:
                return self.model.get_submodule(self._patch_embed)
            except AttributeError:  # the loader named a path this model lacks: nothing to fold into
                return None

        def forward(self, pixels):
            tokens = self.tokens(pixels)
            cls = tokens[:, 0]
            if self.pool == "cls":
                return cls
            return torch.cat([cls, tokens[:, self.n_prefix:].mean(dim=1)], dim=1)

    return Backbone


def split_spec(spec: str) -> tuple[str, str]:
    """``(loader name, what the loader gets)`` of a ``--backbone`` spec.

    An existing path, or a spec without a ``word:`` prefix, goes to the transformers loader whole;
    an unregistered prefix raises with the registered names.
    """
    match = _LOADER_PREFIX.match(spec)
    if match is None or Path(spec).expanduser().exists():
        return "transformers", spec
    LOADERS.get(match.group(1))
    return match.group(1), match.group(2)


def spec_path(spec: str) -> tuple[str, str] | None:
    """The local path a ``--backbone`` spec may name, as ``(prefix, path)`` with ``spec == prefix + path``:
    the transformers loader's directory (``DIR``, ``transformers:DIR``) or timm's ``timm:local-dir:DIR``;
    None for timm names and ``timm:hf-hub:``. A transformers spec is returned whether or not the
    directory exists (``org/name`` may be a Hub id); the caller checks."""
    kind, what = split_spec(spec)
    if kind == "timm" and what.startswith("local-dir:"):
        return spec[: len(spec) - len(what) + len("local-dir:")], what[len("local-dir:"):]
    if kind != "transformers":
        return None
    return spec[: len(spec) - len(what)], what


def load_backbone(name: str, *, checkpoint: str | None = None, adapter: str | None = None,
                  pool: str = "cls"):
    """Load a frozen backbone in eval mode on CPU.

    Returns ``(backbone, identity)`` where identity is a JSON dict with the loader's name, the
    weight hash, architecture, adapter hash and pooling, and no name or path: the same weights
    loaded from another place have the same identity. Raises `BackboneError` with a fix on
    failure.
    """
    if pool not in POOLS:
        raise BackboneError(f"unknown pooling '{pool}': pass --pool one of {', '.join(POOLS)}")
    kind, what = split_spec(name)
    loaded = LOADERS.get(kind)(what, checkpoint=checkpoint)
    model = loaded.model
    ident = {"loader": kind, "arch": loaded.arch, "weights_sha256": hash_tensors(model.state_dict().items()),
             "adapter": None}
    if adapter:
        model, ident["adapter"] = _merge_adapter(model, adapter)
        loaded = dataclasses.replace(loaded, model=model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = _backbone_module()(loaded, kind=kind, pool=pool).eval()
    ident["pool"] = pool
    ident["n_prefix_tokens"] = loaded.n_prefix
    return backbone, ident


def _hf_tokens(model, pixels):
    return model(pixel_values=pixels).last_hidden_state


def _timm_tokens(model, pixels):
    return model.forward_features(pixels)


@register_loader("transformers")
def load_transformers(name: str, *, checkpoint: str | None) -> LoadedModel:
    """DINOv3ViTModel from a local directory or a Hub id."""
    from transformers import AutoConfig, DINOv3ViTModel

    if checkpoint:
        raise BackboneError("--checkpoint applies to timm backbones only: for transformers pass the "
                            "directory as --backbone")

    path = Path(name).expanduser()
    local = path.is_dir()
    if not local:
        if path.exists():
            raise BackboneError(f"backbone '{name}' is a file, not a model directory: pass the folder that "
                                "holds config.json, or timm:<model> with --checkpoint FILE")
        first = Path(name.split("/", 1)[0]).expanduser()
        if "/" in name and first.is_dir() and first.name not in ("", "."):
            raise BackboneError(f"backbone directory '{name}' does not exist (but '{first}' does): check the path")
        if not _HUB_ID.match(name) or name.startswith((".", "/", "~")):
            raise BackboneError(
                f"backbone '{name}' is neither a local directory, a Hub id like "
                "facebook/dinov3-vitl16-pretrain-lvd1689m, nor timm:<model>: check the spelling"
            )
    where = str(path) if local else name
    offline = None if local else _hub_offline()  # None: the Hub answered, else why it is not used
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=offline is not None)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if offline is not None:
            raise BackboneError(f"backbone '{name}' is neither a local directory nor in the Hub cache, and {offline}: "
                                "pass --backbone PATH with a local copy (download it once where the Hub is reachable)"
                                ) from None
        hint = ("the directory needs a config.json written by save_pretrained" if local else
                "the repo may be gated or misspelled: download it once (accept the licence, `huggingface-cli "
                "login`) and pass --backbone PATH with the local directory")
        raise BackboneError(f"cannot load backbone '{name}' ({first}): {hint}") from None
    if config.model_type != "dinov3_vit":
        raise BackboneError(f"backbone '{name}' is a '{config.model_type}' model, not DINOv3 ViT: pass a "
                            "dinov3 ViT checkpoint, or timm:<model> for other architectures")
    try:
        model = DINOv3ViTModel.from_pretrained(where, config=config, local_files_only=offline is not None)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BackboneError(f"cannot load weights of backbone '{name}' ({first}): re-download or re-save it") from None
    # Only the architecture's own arguments: generic PretrainedConfig fields (label maps,
    # output flags) do not change the features and vary between transformers versions.
    from transformers import PretrainedConfig

    generic = set(inspect.signature(PretrainedConfig.__init__).parameters)
    own = set(inspect.signature(type(config).__init__).parameters) - generic - {"self", "kwargs"}
    arch = {k: v for k, v in config.to_dict().items() if k in own and k not in _CONFIG_NOISE}
    return LoadedModel(model=model, arch=arch, n_prefix=1 + int(config.num_register_tokens),
                       width=int(config.hidden_size), tokens=_hf_tokens, patch_embed="embeddings.patch_embeddings")


def _hub_offline() -> str | None:
    """Why the Hub is not to be used (offline mode, or it did not answer one quick request), or None.

    One request without retries: the Hub client's own back-off spends about 30 seconds on a
    machine without network before failing, and then the same for the weights.
    """
    from huggingface_hub import constants, get_session

    flags = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
             if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
    if flags or constants.HF_HUB_OFFLINE:
        return f"{(flags or ['HF_HUB_OFFLINE'])[0]} is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=5)  # any HTTP answer means it is reachable
    except Exception as exc:  # noqa: BLE001 - every way of not connecting means the same here
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return f"the Hub ({constants.ENDPOINT}) is unreachable ({reason})"
    return None


@register_loader("timm")
def load_timm(name: str, *, checkpoint: str | None) -> LoadedModel:
    """A timm model by name (+ optional checkpoint file) or timm's local-dir/hf-hub forms."""
    import timm

    external = name.startswith(("local-dir:", "hf-hub:"))
    if not external and not timm.is_model(name):
        options = ", ".join(timm.list_models("*dinov3*")[:12])
        raise BackboneError(f"unknown timm model '{name}': pass one of {options} (or any timm.list_models() name)")
    if external and checkpoint:
        raise BackboneError("--checkpoint cannot be combined with timm local-dir:/hf-hub: sources, which carry weights")
    try:
        model = timm.create_model(name, pretrained=external or checkpoint is None, num_classes=0)
    except (OSError, RuntimeError, ValueError, FileNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(
            f"cannot load timm backbone '{name}' ({first}): weights come from the Hub, which may be "
            "unreachable; pass --checkpoint FILE or timm:local-dir:DIR"
        ) from None
    if checkpoint:
        _load_checkpoint(model, Path(checkpoint))
    if not hasattr(model, "forward_features") or not hasattr(model, "num_prefix_tokens"):
        raise BackboneError(f"timm model '{name}' is not a ViT with prefix tokens: pass a *_dinov3 model")
    arch = {"architecture": model.default_cfg.get("architecture", name.split(":")[-1]),
            "embed_dim": int(model.num_features), "depth": len(getattr(model, "blocks", [])),
            "num_prefix_tokens": int(model.num_prefix_tokens)}
    return LoadedModel(model=model, arch=arch, n_prefix=int(model.num_prefix_tokens),
                       width=int(model.num_features), tokens=_timm_tokens, patch_embed="patch_embed.proj")


def _load_checkpoint(model, path: Path) -> None:
    """Load a state dict file into `model` strictly, without unpickling arbitrary objects."""
    import torch

    if not path.is_file():
        raise BackboneError(f"checkpoint '{path}' does not exist: pass an existing .safetensors or .pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to the user
        raise BackboneError(f"checkpoint '{path}' is unreadable ({type(exc).__name__}): pass a "
                            ".safetensors file or a plain state-dict .pth") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        first = str(exc).strip().splitlines()[-1].strip()
        raise BackboneError(f"checkpoint '{path}' does not fit the architecture ({first}): pass the matching "
                            "timm:<model>") from None
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise BackboneError(
            f"checkpoint '{path}' does not fit the architecture ({len(missing)} missing, {len(unexpected)} "
            f"unexpected keys, e.g. {(missing + unexpected)[0]}): pass the matching timm:<model>"
        )


def _merge_adapter(model, adapter: str):
    """Apply a PEFT LoRA/DoRA adapter directory and merge it into the weights."""
    from peft import PeftModel

    path = Path(adapter).expanduser()
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise BackboneError(f"adapter '{adapter}' has no adapter_config.json: pass a directory written by "
                            "PEFT's save_pretrained")
    weights = [path / "adapter_model.safetensors", path / "adapter_model.bin"]
    weights = [w for w in weights if w.is_file()]
    if not weights:
        raise BackboneError(f"adapter '{adapter}' has no adapter_model.safetensors: re-save the adapter")
    if weights[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(weights[0]))
    else:
        import torch

        tensors = torch.load(weights[0], map_location="cpu", weights_only=True)
    config = json.loads(cfg_file.read_text())
    # Only the fields that change the merged weights: bookkeeping (peft_version, dropout,
    # init scheme, null fields newer PEFT releases add) must not force a re-extraction.
    config = {k: config[k] for k in sorted(_ADAPTER_KEYS) if config.get(k) not in (None, {}, [])}
    try:
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BackboneError(f"adapter '{adapter}' does not fit this backbone ({first}): pass the adapter "
                            "trained on this backbone") from None
    return merged, {"weights_sha256": hash_tensors(tensors.items()), "config": _jsonable(config)}


def _jsonable(value):
    """Sets and tuples inside PEFT configs → sorted lists, so they hash canonically."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_tiny_dinov3(out: str | Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Save a tiny randomly initialised DINOv3 ViT (4 registers, patch 16) with save_pretrained."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=2 * hidden_size, num_register_tokens=4, image_size=224)
    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    out = Path(out)
    model.save_pretrained(out)
    return out
