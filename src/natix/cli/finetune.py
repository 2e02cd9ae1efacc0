"""`natix finetune`: train the backbone (LoRA, DoRA, last-k or full) with a head, write the adapter,
and optionally extract a new cache with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from natix.cli.common import (
    AGGREGATOR,
    CHALLENGE,
    COUNT,
    HEAD,
    SEED,
    Number,
    comma_names,
    echo_result,
    force_option,
    json_option,
    names_in,
    quiet_transformers,
)
from natix.cli.extract import CACHE_HELP
from natix.cli.group import Interrupted, cli, library_errors
from natix.cli.heads import RATIOS

LR = Number(min=0, max=10, min_open=True, max_open=True)


def finetune_text(res: dict) -> str:
    """What `natix finetune` prints: the run, how to extract with the adapter, the metrics."""
    h = res["history"]
    a = res["adapter"]
    lines = [f"run       {res['out']}  ({len(h['epochs'])} epochs, best {h['best_epoch']}, {h['steps']} optimizer "
             f"steps; {res['seconds']:.1f} s)" + (f"; resumed at epoch {res['resumed_at'][0]}, batch "
                                                   f"{res['resumed_at'][1]}" if res["resumed_at"] else ""),
             f"adapter   {a['path']}  (natix extract DATA ... {a['option']} {a['path']})"]
    chal = res.get("challenge")
    if res.get("cache"):
        kept, changed = res.get("kept", []), res.get("changed", [])
        note = f"other caches there, unchanged (size and mtime): {len(kept)}" if kept else "no other cache there"
        if changed:
            note += f"; changed meanwhile: {', '.join(changed)}"
        if chal:
            note = (f"clean images; natix extract --challenge {chal['name']} --seed {chal['seed']} --draws K with this "
                    f"adapter for draws; {note}")
        lines.append(f"cache     {res['cache']}  (new fingerprint; {note})")
    if chal:
        lines.append(f"challenge {chal['name']} (seed {chal['seed']}): trained on draw e of each image at epoch e; "
                     "the metrics below are under draw 0 of each image")
    lines.append(f"{'split':<11}{'n':>6}{'accuracy':>10}{'mcc':>10}{'auroc':>10}{'nll':>10}  (fractions)")
    for split, m in res["metrics"].items():
        lines.append(f"{split:<11}{m['n']:>6}{m['accuracy']:>10.4f}{m['mcc']:>10.4f}{m['auroc']:>10.4f}{m['nll']:>10.4f}")
    return "\n".join(lines)


def dino_text(res: dict) -> str:
    """What `natix finetune --objective dino` prints."""
    losses = ", ".join(f"{e['dino_loss']:.4f}" for e in res["history"])
    a = res["adapter"]
    return "\n".join([f"run       {res['out']}  (DINO, {len(res['history'])} epochs; {res['seconds']:.1f} s)",
                      f"adapter   {a['path']}  (natix extract DATA ... {a['option']} {a['path']}, or natix finetune "
                      f"--init-adapter {a['path']})",
                      f"loss      per epoch: {losses}"])


@cli.command("finetune")
@click.argument("data", type=click.Path())
@click.option("--backbone", required=True, help="Hub id, local directory (save_pretrained), or timm:<model>.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights file for a timm:<model> backbone.")
@click.option("--init-adapter", type=click.Path(file_okay=False), help="Start from this PEFT adapter (merged first).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@force_option("natix fine-tuning run (removed first; an interrupted one too, instead of --resume)")
@click.option("--objective", type=click.Choice(["supervised", "dino"]), default="supervised", show_default=True,
              help="dino: ExPLoRA-style self-supervised pretraining on the images (labels ignored).")
@click.option("--method", type=names_in("natix.finetune.adapters", "METHODS"), default="lora", show_default=True)
@click.option("--rank", type=COUNT, default=8, show_default=True, help="LoRA/DoRA rank.")
@click.option("--lora-alpha", type=Number(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--lora-dropout", type=Number(min=0, max=1, max_open=True), default=0.0, show_default=True)
@click.option("--targets", default=None, help="Comma-separated linear layers to adapt [default: attention + MLP].")
@click.option("--unfreeze-last", type=COUNT, default=1, show_default=True, help="last-k: blocks that train.")
@click.option("--full-blocks", type=Number(min=0, integer=True), default=None,
              help="lora/dora: last blocks that also train in full  [default: 1 with --objective dino, else 0]")
@click.option("--local-crops", type=Number(min=0, integer=True), default=4, show_default=True,
              help="dino: small crops per image for the student.")
@click.option("--head", type=HEAD, default="linear", show_default=True)
@click.option("--agg", type=AGGREGATOR, default="mean", show_default=True)
@click.option("--views", type=COUNT, default=1, show_default=True, help="1 (global), 10 (+tiles), 20 (+flips).")
@click.option("--epochs", type=COUNT, default=5, show_default=True)
@click.option("--lr", type=LR, default=1e-4, show_default=True, help="Backbone learning rate.")
@click.option("--head-lr", type=LR, default=1e-3, show_default=True)
@click.option("--weight-decay", type=Number(min=0), default=1e-4, show_default=True)
@click.option("--warmup", type=Number(min=0, max=1, max_open=True), default=0.1, show_default=True,
              help="Fraction of the steps spent warming up (then cosine decay).")
@click.option("--batch-size", type=COUNT, default=16, show_default=True)
@click.option("--grad-accum", type=COUNT, default=1, show_default=True, help="Batches per optimizer step.")
@click.option("--patience", type=COUNT, default=2, show_default=True, help="Epochs without a better val_select loss.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--precision", type=names_in("natix.config", "PRECISIONS"), default="auto", show_default=True)
@click.option("--checkpointing", is_flag=True, help="Gradient checkpointing (less memory, more time).")
@click.option("--save-every", type=COUNT, default=50, show_default=True, help="Optimizer steps between checkpoints.")
@click.option("--view-cache-mb", type=Number(min=0, integer=True), default=1024, show_default=True,
              help="Memory for keeping decoded views (source images with --challenge) across epochs (0: decode "
                   "every epoch).")
@click.option("--challenge", type=CHALLENGE, default="clean", show_default=True,
              help="Challenge recipe as training augmentation: at epoch e each training image is its draw e (as "
                   "extract --challenge draws it); validation and the metrics use draw 0.")
@click.option("--challenge-seed", type=SEED, default=0, show_default=True,
              help="Challenge seed: with the image and the epoch it fixes each draw.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its checkpoint.")
@click.option("--splits", "splits_path", type=click.Path(dir_okay=False), help="Reuse a run's splits.json.")
@click.option("--ratios", type=RATIOS, default="0.6,0.1,0.15,0.15", show_default=True)
@click.option("--split-seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--extract", "then_extract", is_flag=True, help="Then extract DATA with the adapter into a new cache.")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--allow-outside", is_flag=True, help="Let a manifest name images outside its folder.")
@json_option
@library_errors
def finetune(data, backbone, checkpoint, init_adapter, out, force, objective, method, rank, lora_alpha, lora_dropout, targets,
             unfreeze_last, full_blocks, local_crops, head, agg, views, epochs, lr, head_lr, weight_decay, warmup, batch_size, grad_accum,
             patience, seed, precision, checkpointing, save_every, view_cache_mb, challenge, challenge_seed, resume,
             splits_path, ratios, split_seed, device, then_extract, cache_root, allow_outside, as_json) -> None:
    """Fine-tune the backbone with a head on DATA's labeled images (same splits as tier 2)."""
    from natix.config import ViewRecipe
    from natix.finetune.adapters import AdapterSpec
    from natix.finetune.train import FinetuneConfig
    from natix.finetune.train import finetune as run_finetune

    quiet_transformers()
    dino = objective == "dino"
    if dino and (challenge != "clean" or challenge_seed != 0):
        raise click.UsageError("--objective dino takes no --challenge or --challenge-seed (its crops are its "
                               "augmentation): drop them, or pass them to the supervised run that follows")
    spec = AdapterSpec(method=method, rank=rank, alpha=lora_alpha, dropout=lora_dropout,
                       targets=tuple(comma_names(targets)) if targets else None, unfreeze_last=unfreeze_last,
                       full_blocks=(1 if dino else 0) if full_blocks is None else full_blocks)
    config = FinetuneConfig(adapter=spec, head=head, agg=agg, epochs=epochs, lr=lr, head_lr=head_lr,
                            weight_decay=weight_decay, warmup=warmup, batch_size=batch_size, grad_accum=grad_accum,
                            patience=patience, seed=seed, precision=precision, checkpointing=checkpointing,
                            save_every=save_every, view_cache_mb=view_cache_mb, challenge=challenge,
                            challenge_seed=challenge_seed)
    recipe = ViewRecipe(n_views=views)
    if dino and (init_adapter or resume or then_extract or splits_path):
        raise click.UsageError("--objective dino takes no --init-adapter, --resume, --extract or --splits: start "
                               "a supervised run from its adapter with --init-adapter")
    claim_out(out, force, resume)
    try:
        if dino:
            from natix.finetune.dino import DinoConfig, pretrain

            res = pretrain(data, backbone, out, config=config, dino=DinoConfig(local_crops=local_crops),
                           checkpoint=checkpoint, device=device, allow_outside=allow_outside)
            if res:  # rank 0 of a torchrun job (or a plain process) reports
                echo_result(as_json, res, dino_text)
            return
        r = run_finetune(data, backbone, out, config=config, recipe=recipe, checkpoint=checkpoint,
                         init_adapter=init_adapter, splits_path=splits_path, ratios=ratios, split_seed=split_seed,
                         device=device, resume=resume, allow_outside=allow_outside)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_finetune(out, dino)) from None
    if r is None:  # another process of a torchrun job: rank 0 reports
        return
    res = {"out": str(r.out), "adapter": r.adapter, "metrics": r.metrics, "history": r.history, "seconds": r.seconds,
           "resumed_at": r.resumed_at, "challenge": r.challenge, "cache": None}
    if then_extract:
        before = _cache_stats(cache_root)
        cache = _extract_with(data, backbone, checkpoint, r.adapter, recipe, cache_root, device, allow_outside)
        after = _cache_stats(cache_root)
        res["cache"] = str(cache)
        others = {p: st for p, st in before.items() if p.name != Path(cache).name}
        res["kept"] = [str(p) for p, st in others.items() if after.get(p) == st]
        res["changed"] = [str(p) for p, st in others.items() if after.get(p) != st]
    echo_result(as_json, res, finetune_text)


def claim_out(out, force: bool, resume: bool) -> None:
    """Check --out before fine-tuning: an earlier run there is refused without --force and removed
    with it, a checkpoint is continued with --resume, anything else is refused even with --force."""
    from natix.distributed import job_env
    from natix.finetune.train import CHECKPOINT
    from natix.rundir import check_replace, is_run

    if force and resume:
        raise click.UsageError("--force starts over and --resume continues the run in --out: pass one of them")
    out = Path(out)
    if resume or (force and job_env()[0] != 0):
        return  # the library checks the checkpoint; under torchrun rank 0 clears --out before the job starts
    if (out / CHECKPOINT).is_file() and not force:
        raise click.ClickException(f"'{out}' holds the checkpoint of an interrupted run: pass --resume to continue "
                                   "it, --force to start over, or a new --out")
    if check_replace(out, force=force, what="natix fine-tuning run",
                     ours=lambda p: is_run(p) or (p / CHECKPOINT).is_file()):
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def interrupted_finetune(out, dino: bool) -> str:
    """The line for a fine-tuning run stopped by Ctrl-C: what is kept and how to go on."""
    from natix.finetune.train import CHECKPOINT

    if dino:
        return f"DINO pretraining does not resume: rerun to start {out} again"
    if (Path(out) / CHECKPOINT).is_file():
        return f"the last checkpoint in {out} is kept: rerun the same command with --resume to continue"
    return f"no checkpoint was written yet in {out}: rerun to start again"


def _cache_stats(cache_root) -> dict:
    """(size, mtime_ns) of every cache file in the cache directory: what `--extract` must leave alone."""
    from natix.cache.store import resolve_cache_root

    root = resolve_cache_root(cache_root)
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.glob("*.h5"))} if root.is_dir() else {}


def _extract_with(data, backbone, checkpoint, adapter: dict, recipe, cache_root, device, allow_outside):
    """Extract DATA with the fine-tuned weights (same view recipe); the path of the new cache."""
    from natix.config import RunOptions
    from natix.extract.extractor import extract

    kwargs = {"--adapter": {"backbone": backbone, "checkpoint": checkpoint, "adapter": adapter["path"]},
              "--backbone": {"backbone": adapter["path"]},
              "--checkpoint": {"backbone": backbone, "checkpoint": adapter["path"]}}[adapter["option"]]
    name = kwargs.pop("backbone")
    result = extract(data, name, recipe=recipe, cache_root=cache_root, allow_outside=allow_outside,
                     options=RunOptions(device=device), **kwargs)
    return result.cache_file
