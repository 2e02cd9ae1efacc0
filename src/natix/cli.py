"""The `natix` command line: parse → config → one library call → short summary.

Heavy imports (torch, transformers, h5py) happen inside commands so that `natix --help`
stays instant. Library errors (`NatixError`) become one-line click errors with exit status 1;
anything else keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from natix.errors import NatixError


def _library_errors(fn):
    """Turn a `NatixError` into a one-line click error (exit 1), without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NatixError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _load_config(ctx: click.Context, _param, value):
    """Read a YAML file of defaults into ``ctx.default_map``; unknown keys are an error."""
    if not value:
        return value
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read config file ({exc}): pass a readable YAML file") from None
    if not isinstance(data, dict):
        raise click.BadParameter("the config file must be a mapping of command names to option defaults")
    group = ctx.command
    for cmd_name, opts in data.items():
        cmd = group.commands.get(cmd_name) if isinstance(group, click.Group) else None
        if cmd is None:
            raise click.BadParameter(f"unknown command '{cmd_name}' in config file: use one of "
                                     f"{', '.join(sorted(group.commands))}")
        if isinstance(cmd, click.Group):
            continue
        # Keys are the long flag names (`cache`, `batch-size` or `batch_size`), mapped to parameters.
        names = {}
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("--"):
                    names[opt[2:]] = p.name
                    names[opt[2:].replace("-", "_")] = p.name
        bad = sorted(k for k in (opts or {}) if k not in names)
        if bad:
            raise click.BadParameter(f"unknown option(s) {', '.join(bad)} for '{cmd_name}' in config file: "
                                     f"use {', '.join(sorted(k for k in names if '_' not in k))}")
        data[cmd_name] = {names[k]: v for k, v in (opts or {}).items()}
    ctx.default_map = data
    return value


class _OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr: exit 2 for usage, 1 for the rest."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "natix"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="natix")
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
              expose_value=False, help="YAML file of defaults per command (flags win).")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """natix: extract DINOv3 view features once, train everything else from the cache."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- demo helpers


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", default=200, show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same bytes).")
@_library_errors
def demo_data(out: str, n: int, seed: int) -> None:
    """Write a synthetic street-scene image set with labels.csv into OUT."""
    from natix.data.demo import make_demo_images

    csv = make_demo_images(out, n=n, seed=seed)
    click.echo(f"wrote {n} images and {csv}")


@cli.command("demo-backbone")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--hidden-size", default=32, show_default=True)
@click.option("--layers", default=2, show_default=True)
@_library_errors
def demo_backbone(out: str, seed: int, hidden_size: int, layers: int) -> None:
    """Save a tiny randomly initialised DINOv3 ViT to OUT (for demos and tests)."""
    from natix.extract.backbones import save_tiny_dinov3

    _quiet_transformers()
    path = save_tiny_dinov3(out, seed=seed, hidden_size=hidden_size, layers=layers)
    click.echo(f"saved a random DINOv3 ViT (hidden {hidden_size}, {layers} layers, 4 registers) to {path}")


def _quiet_transformers() -> None:
    """Hide transformers' per-load progress bars; our own bar reports progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# --------------------------------------------------------------------------- extract


@cli.command()
@click.argument("data", type=click.Path())
@click.option("--backbone", required=True,
              help="Hub id, local directory (save_pretrained), or timm:<model>.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights file for a timm:<model> backbone.")
@click.option("--adapter", type=click.Path(file_okay=False), help="PEFT LoRA/DoRA adapter directory (merged).")
@click.option("--views", type=int, default=10, show_default=True, help="1 (global), 10 (+tiles), 20 (+flips).")
@click.option("--grid", type=int, default=3, show_default=True, help="Tiles per side.")
@click.option("--overlap", type=float, default=0.125, show_default=True, help="Tile overlap fraction in [0, 1).")
@click.option("--view-size", type=int, default=224, show_default=True, help="Global view side (multiple of 16).")
@click.option("--tile-size", type=int, default=None, help="Tile side (multiple of 16)  [default: view size]")
@click.option("--pool", type=click.Choice(["cls", "cls+mean"]), default="cls", show_default=True)
@click.option("--store-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU (part of the cache identity).")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False),
              help="Cache directory  [default: $NATIX_CACHE, else ./.natix-cache]")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per model step.")
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the backbone (CUDA).")
@click.option("--retry-failures", is_flag=True, help="Decode again images that failed before.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_library_errors
def extract(data, backbone, checkpoint, adapter, views, grid, overlap, view_size, tile_size, pool, store_dtype,
            precision, cache_root, batch_size, workers, device, compile_, retry_failures, quiet, as_json) -> None:
    """Extract per-view features of every image in DATA (folder or CSV/JSONL manifest)."""
    from natix.config import RunOptions, ViewRecipe
    from natix.extract.extractor import extract as run_extract

    recipe = ViewRecipe(n_views=views, grid=grid, overlap=overlap, view_size=view_size,
                        tile_size=tile_size or view_size)
    options = RunOptions(batch_size=batch_size, workers=workers, device=device, progress=not quiet)
    _quiet_transformers()
    r = run_extract(data, backbone, recipe=recipe, pool=pool, store_dtype=store_dtype, precision=precision,
                    checkpoint=checkpoint, adapter=adapter, cache_root=cache_root, options=options,
                    compile=compile_, retry_failures=retry_failures)
    if as_json:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in r.__dict__.items()}
        out["images_per_s"] = r.images_per_s
        out["model_work"] = r.model_work
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"cache     {r.cache_file}  (fingerprint {r.fingerprint[:16]})")
    click.echo(f"images    {r.images} in source: {r.already_cached} already cached, {r.resumed} resumed from an "
               f"interrupted run, {r.extracted} extracted, {r.failed} failed, {r.known_failures} known failures")
    if r.metadata_updates:
        click.echo(f"metadata  {r.metadata_updates} cached images got a new path/label/group")
    if r.model_work:
        click.echo(f"speed     {r.images_per_s:.1f} images/s, {r.images_per_s * r.n_views:.0f} views/s on "
                   f"{r.device} ({r.precision}, batch {r.batch_size}); {r.seconds:.1f} s in all")
    else:
        click.echo(f"no model work: every image is already in the cache ({r.seconds:.1f} s)")
    click.echo(f"features  [N, {r.n_views}, {r.dim}]")


# --------------------------------------------------------------------------- cache


@cli.group()
def cache() -> None:
    """Inspect feature caches."""


@cache.command("ls")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False),
              help="Cache directory  [default: $NATIX_CACHE, else ./.natix-cache]")
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def cache_ls(cache_root, as_json) -> None:
    """List the caches in the cache directory."""
    from natix.cache.store import list_caches, resolve_cache_root

    root = resolve_cache_root(cache_root)
    rows = list_caches(root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no caches in {root}")
        return
    click.echo(f"{'file':<22} {'images':>7} {'views':>5} {'dim':>5} {'MB':>8}  backbone / note")
    for r in rows:
        name = Path(r["path"]).name
        if "error" in r:
            click.echo(f"{name:<22} {'?':>7} {'?':>5} {'?':>5} {'?':>8}  UNREADABLE: {r['error']}")
            continue
        note = f"  ({r['pending_parts']} unmerged chunks)" if r["pending_parts"] else ""
        click.echo(f"{name:<22} {r['images']:>7} {r['views']:>5} {r['dim']:>5} {r['size_mb']:>8.1f}  "
                   f"{r['backbone']}{note}")


@cache.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def cache_info(file, as_json) -> None:
    """Describe one cache file: identity, contents, views, failures."""
    import numpy as np

    from natix.cache.store import open_cache

    c = open_cache(file)
    labels = {int(k): int(v) for k, v in zip(*np.unique(c.labels, return_counts=True))}
    info = {"path": str(c.path), "fingerprint": c.fingerprint, "images": len(c), "views": c.n_views,
            "dim": c.dim, "dtype": str(c.dtype), "labels": {"roadwork": labels.get(1, 0),
                                                            "no_roadwork": labels.get(0, 0),
                                                            "unknown": labels.get(-1, 0)},
            "failures": len(c.failures), "natix_version": c.attrs.get("natix_version"),
            "created": c.attrs.get("created"), "updated": c.attrs.get("updated"), "source": c.source,
            "identity": c.identity}
    if as_json:
        info["view_table"] = [{"name": v.name, "box": v.box, "flip": v.flip} for v in c.views]
        info["failure_list"] = c.failures
        click.echo(json.dumps(info, indent=2))
        return
    ident = c.identity
    bb = ident["backbone"]
    click.echo(f"file         {c.path}")
    click.echo(f"fingerprint  {c.fingerprint}")
    click.echo(f"features     [{len(c)}, {c.n_views}, {c.dim}] {c.dtype}")
    click.echo(f"labels       {info['labels']['roadwork']} roadwork, {info['labels']['no_roadwork']} no_roadwork, "
               f"{info['labels']['unknown']} unknown")
    click.echo(f"backbone     {c.source.get('backbone', '?')} ({bb['loader']})  weights {bb['weights_sha256'][:12]}  "
               f"adapter {'none' if not bb['adapter'] else bb['adapter']['weights_sha256'][:12]}  pool {bb['pool']}")
    v = ident["views"]
    click.echo(f"views        {v['n_views']} (grid {v['grid']}, overlap {v['overlap']}, view {v['view_size']}, "
               f"tile {v['tile_size']}, flips {v['flips']}); precision {ident['precision']}")
    p = ident["preprocess"]
    click.echo(f"preprocess   {p['resize']} / {p['sampler']}, mean {p['mean']}, std {p['std']}")
    click.echo(f"view table   {', '.join(c.view_names)}")
    click.echo(f"written      created {info['created']}, updated {info['updated']}, natix {info['natix_version']}")
    click.echo(f"failures     {len(c.failures)}")
    for fl in c.failures[:10]:
        click.echo(f"  {fl['path']}: {fl['reason']}")
    if len(c.failures) > 10:
        click.echo(f"  ... {len(c.failures) - 10} more (use --json)")


@cache.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@_library_errors
def cache_verify(file) -> None:
    """Check a cache file: fingerprint, row counts, ids, finite values, checksum."""
    from natix.cache.store import verify_cache

    report = verify_cache(file)
    if report["ok"]:
        click.echo(f"ok: {report['images']} images x {report['views']} views x {report['dim']} dims; "
                   f"checked {', '.join(report['checked'])}")
        return
    for p in report["problems"]:
        click.echo(f"problem: {p}", err=True)
    raise click.ClickException(f"{file} failed verification ({len(report['problems'])} problem(s))")


# --------------------------------------------------------------------------- tier 2: heads


def _head_options(fn):
    """Options shared by fit-head and ablate: the model's hyperparameters and the training."""
    opts = [
        click.option("--hidden", default=256, show_default=True, help="MLP width."),
        click.option("--depth", default=1, show_default=True, help="MLP hidden layers."),
        click.option("--dropout", default=0.1, show_default=True),
        click.option("--k", "topk", default=2, show_default=True, help="Views averaged by the topk aggregator."),
        click.option("--view-embedding/--no-view-embedding", default=False, show_default=True,
                     help="Learned view-position embedding."),
        click.option("--view-dropout", default=0.0, show_default=True, help="Training-time view dropout."),
        click.option("--coverage", default=0.8, show_default=True, help="Gate policy: target coverage."),
        click.option("--optimizer", type=click.Choice(["auto", "lbfgs", "adamw"]), default="auto", show_default=True,
                     help="auto: full-batch L-BFGS (numpy) for linear heads on global/mean/max/topk, AdamW otherwise."),
        click.option("--l2", default="1e-4,1e-3,1e-2,1e-1,1", show_default=True,
                     help="L-BFGS: L2 penalties tried together; the best on val_select is kept."),
        click.option("--lr", type=float, default=None, help="AdamW learning rate [default: 1e-2 for linear heads, "
                     "1e-3 for mlp]."),
        click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay."),
        click.option("--batch-size", default=256, show_default=True, help="AdamW batch; 0 = full batch."),
        click.option("--max-epochs", default=100, show_default=True, help="AdamW epochs."),
        click.option("--patience", type=int, default=None,
                     help="Epochs (AdamW) or iterations (L-BFGS) without improvement on val_select "
                          "[default: 2 epochs, 8 iterations]."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                     help="AdamW training forward; auto = bf16 autocast where the CPU/GPU multiplies bf16 natively."),
        click.option("--threads", default=0, show_default=True,
                     help="CPU threads (torch and BLAS); 0 = every available core, divided by --jobs."),
        click.option("--stop-metric", type=click.Choice(["nll", "mcc"]), default="nll", show_default=True,
                     help="Early stopping on val_select."),
        click.option("--class-weights", is_flag=True, help="Weight classes to equal total weight."),
        click.option("--ratios", default="0.6,0.1,0.15,0.15", show_default=True,
                     help="train,val_select,val_calib,val_test fractions."),
        click.option("--split-seed", default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _configs(head, agg, policy, seed, o):
    from natix.heads.config import HeadConfig, TrainConfig

    hc = HeadConfig(head=head, agg=agg, policy=policy, hidden=o["hidden"], depth=o["depth"], dropout=o["dropout"],
                    k=o["topk"], view_embedding=o["view_embedding"], view_dropout=o["view_dropout"],
                    coverage=o["coverage"])
    tc = TrainConfig(optimizer=o["optimizer"], l2=_floats(o["l2"], "--l2"), lr=o["lr"],
                     weight_decay=o["weight_decay"], batch_size=o["batch_size"], max_epochs=o["max_epochs"],
                     patience=o["patience"], stop_metric=o["stop_metric"], class_weights=o["class_weights"], seed=seed,
                     device=o["device"], threads=o["threads"], precision=o["precision"])
    tc.engine(hc)  # an optimizer that cannot fit this head fails before any data is read
    return hc, tc


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise click.BadParameter(f"'{text}' is not comma-separated numbers, e.g. 1e-3,1e-2", param_hint=option)
    return values


def _ratios(text: str):
    try:
        ratios = tuple(float(x) for x in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 4:
        raise click.BadParameter(f"'{text}' is not four comma-separated fractions, e.g. 0.6,0.1,0.15,0.15",
                                 param_hint="--ratios")
    return ratios


def _metrics_table(metrics: dict, splits=("train", "val_select", "val_calib", "val_test", "train_oof")) -> str:
    names = ("n", "accuracy", "mcc", "auroc", "nll", "ece", "augrc", "natix_reward")
    lines = [f"{'split':<11}" + "".join(f"{n:>13}" for n in names)]
    for split in splits:
        if split in metrics:
            m = metrics[split]
            lines.append(f"{split:<11}" + "".join(f"{m[n]:>13}" if n == "n" else f"{m[n]:>13.4f}" for n in names))
    return "\n".join(lines)


@cli.command("fit-head")
@click.argument("features", type=click.Path(dir_okay=False))
@click.option("--head", default="linear", show_default=True, help="linear or mlp.")
@click.option("--agg", default="mean", show_default=True,
              help="global, mean, max, topk, attention, gated-attention.")
@click.option("--policy", default="softmax", show_default=True,
              help="softmax, gate, or scrc (softmax head + Platt + SCRC exit).")
@click.option("--alpha", default=0.1, show_default=True, help="scrc: risk level.")
@click.option("--delta", default=0.1, show_default=True, help="scrc: failure probability.")
@click.option("--acceptance", default=0.8, show_default=True, help="scrc: target acceptance rate.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--seed", default=0, show_default=True)
@click.option("--splits", "splits_path", type=click.Path(dir_okay=False), help="Reuse a splits.json.")
@click.option("--oof-folds", default=0, show_default=True, help="Cross-fit K models for out-of-fold train predictions.")
@click.option("--json", "as_json", is_flag=True)
@_head_options
@_library_errors
def fit_head(features, head, agg, policy, alpha, delta, acceptance, out, seed, splits_path, oof_folds, as_json,
             **o) -> None:
    """Train a head on a feature cache and write a run directory."""
    from natix.heads.runs import fit_run

    scrc = policy == "scrc"  # train a softmax head, then calibrate and certify with SCRC
    if scrc:
        from natix.calibrate.checks import unit_open

        for value, name in ((alpha, "alpha"), (delta, "delta"), (acceptance, "acceptance")):
            unit_open(value, name)
    hc, tc = _configs(head, agg, "softmax" if scrc else policy, seed, o)
    r = fit_run(features, out, head=hc, train=tc, splits_path=splits_path, ratios=_ratios(o["ratios"]),
                split_seed=o["split_seed"], oof_folds=oof_folds)
    if scrc:
        from natix.calibrate.apply import calibrate_run

        cal = calibrate_run(out, method="platt", exit="scrc", alpha=alpha, delta=delta,
                            acceptance=acceptance)
    if as_json:
        from natix.calibrate.apply import jsonable

        payload = {"out": str(r.out), "metrics": r.metrics, "seconds": r.seconds}
        if scrc:
            payload["scrc"] = {"val_test": cal.table, "thresholds": cal.thresholds, "guarantee": cal.guarantee}
        click.echo(json.dumps(jsonable(payload), indent=2, allow_nan=False))
        return
    h = r.history
    if h.get("engine") == "lbfgs":
        fit_info = (f"L-BFGS {h['iterations']} iterations, {h['members']} members in {h['passes']} passes, "
                    f"l2 {h['l2']:g} chosen on val_select")
    else:
        fit_info = f"AdamW {h['epochs']} epochs, best {h['best_epoch'] + 1}"
    click.echo(f"run       {r.out}  ({hc.name}, seed {seed}, {fit_info}; {r.seconds:.1f} s)")
    click.echo("metrics are fractions (not x1000); confidence = " +
               ("gate score g" if policy == "gate" else "max(p, 1-p)"))
    click.echo(_metrics_table(r.metrics))
    if scrc:
        click.echo("SCRC: Platt calibration + selective conformal risk control")
        click.echo(_calibration_summary(cal))


@cli.command("evaluate")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--split", default="val_test", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def evaluate(run, split, as_json) -> None:
    """Recompute a run's metrics from its stored predictions."""
    from natix.heads.runs import evaluate_run

    res = evaluate_run(run, split)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{run}  split {split}  (fractions, not x1000; 95% bootstrap CI)")
    for name, value in res["metrics"].items():
        ci = res["ci"].get(name)
        extra = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        click.echo(f"  {name:<18} {value:.4f}{extra}" if name != "n" else f"  {name:<18} {value}")


@cli.command("ablate")
@click.argument("features", type=click.Path(dir_okay=False))
@click.option("--head", "heads", default="linear,mlp", show_default=True)
@click.option("--agg", "aggs", default="global,mean,max,attention", show_default=True)
@click.option("--policy", "policies", default="softmax,gate", show_default=True)
@click.option("--seeds", default=3, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--jobs", default=1, show_default=True, help="Arms trained in parallel processes.")
@click.option("--metric", default="mcc", show_default=True, help="Sort and compare by this metric.")
@click.option("--baseline", default=None, help="Arm to compare against, e.g. linear/mean/softmax [default: first].")
@click.option("-q", "--quiet", is_flag=True)
@_head_options
@_library_errors
def ablate(features, heads, aggs, policies, seeds, out, jobs, metric, baseline, quiet, **o) -> None:
    """Train every head x aggregator x policy x seed arm on one cache; write a leaderboard."""
    from natix.heads.ablate import ablate as run_ablate

    hc, tc = _configs("linear", "mean", "softmax", 0, o)
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    run_ablate(features, out, heads=split(heads), aggs=split(aggs), policies=split(policies), seeds=seeds,
               metric=metric, baseline=baseline, jobs=jobs, head_cfg=hc, train_cfg=tc,
               ratios=_ratios(o["ratios"]), split_seed=o["split_seed"], progress=not quiet)
    click.echo((Path(out) / "leaderboard.md").read_text())


# --------------------------------------------------------------------------- calibration


def _calibration_summary(res) -> str:
    t = res.table
    b, a = t["before"], t["after"]
    lines = [f"val_test ({t['n']} images; fractions, not x1000)", f"{'':<14}{'before':>10}{'after':>10}"]
    for k in ("ece", "nll", "brier", "mcc", "accuracy", "natix_reward"):
        lines.append(f"{k:<14}{b[k]:>10.4f}{a[k]:>10.4f}")
    lines.append(f"coverage {t['coverage']:.4f} ({t['accepted']} accepted), selective risk {t['selective_risk']:.4f}")
    if "bound" in t and t["accepted"] == 0:
        lines.append(f"certified bound: {t['bound']['quantity']} <= {t['bound']['level']}; nothing accepted on "
                     "val_test, so it holds vacuously")
    elif "bound" in t:
        bd = t["bound"]
        verdict = ("undefined on val_test (no images it applies to)" if bd["held"] is None else "held" if bd["held"]
                   else "NOT held (a guarantee holds on average/with probability, not on every test set)")
        lines.append(f"certified bound: {bd['quantity']} <= {bd['level']}; on val_test {bd['observed']:.4f} -> "
                     + verdict)
    lines.append(f"guarantee: {res.guarantee}")
    return "\n".join(lines)


@cli.command("calibrate")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(["temperature", "platt", "beta", "isotonic"]), default="platt",
              show_default=True)
@click.option("--exit", "exit_rule", type=click.Choice(["ltt", "crc", "scrc"]), default=None,
              help="Certified exit rule (none: no deferral).")
@click.option("--alpha", default=0.1, show_default=True, help="Risk level of the guarantee.")
@click.option("--delta", default=0.1, show_default=True, help="Failure probability (LTT, SCRC).")
@click.option("--target-fnr", type=float, default=None, help="Pick the decision threshold for this FNR.")
@click.option("--acceptance", default=0.8, show_default=True, help="SCRC: target acceptance rate.")
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def calibrate(run, method, exit_rule, alpha, delta, target_fnr, acceptance, as_json) -> None:
    """Calibrate a run on val_calib and certify an exit rule; report on val_test."""
    from natix.calibrate.apply import calibrate_run

    res = calibrate_run(run, method=method, exit=exit_rule, alpha=alpha, delta=delta, target_fnr=target_fnr,
                        acceptance=acceptance)
    if as_json:
        from natix.calibrate.apply import jsonable

        click.echo(json.dumps(jsonable({"calibration": res.calibration, "thresholds": res.thresholds,
                                        "val_test": res.table, "guarantee": res.guarantee}), indent=2, allow_nan=False))
        return
    click.echo(f"{run}: {method} calibration, exit {exit_rule or 'none'} -> calibration.json, thresholds.json")
    click.echo(_calibration_summary(res))


@cli.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder [default: RUN/report].")
@_library_errors
def report(run, out) -> None:
    """Plot reliability, risk-coverage and confidence histograms of a run (PNG + markdown)."""
    from natix.calibrate.report import write_report

    md = write_report(run, out)
    click.echo(f"wrote {md} and {len(list(md.parent.glob('*.png')))} plots")


# --------------------------------------------------------------------------- cascade


@cli.command("fit-failure")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--model", type=click.Choice(["xgboost", "mlp"]), default="xgboost", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True,
              help="CPU threads (torch, BLAS and XGBoost); 0 = every available core.")
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def fit_failure(run, model, seed, threads, as_json) -> None:
    """Train a failure predictor on a run's out-of-fold predictions; compare it on val_test."""
    from natix.cascade.failure import fit_failure_run

    res = fit_failure_run(run, model=model, seed=seed, threads=threads)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{run}: failure predictor ({model}) -> failure.json, failure.safetensors; val_test, "
               f"{res['n']} images, error rate {res['error_rate']:.4f} (95% bootstrap CIs, fractions)")
    click.echo(f"{'confidence':<28}{'AUROC_f':>26}{'FPR@95%TPR':>26}{'AUGRC':>26}")
    for name, m in res["confidences"].items():
        cells = "".join(f"{m[k]['estimate']:>9.4f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]"
                        for k in ("auroc_f", "fpr_at_95_tpr", "augrc"))
        click.echo(f"{name:<28}{cells}")


@cli.command("tune-gatekeeper")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--alpha", "alphas", default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              help="Comma-separated Gatekeeper alphas (weight of CE on correct answers).")
@click.option("--stage2", type=click.Path(file_okay=False), default=None, help="A stronger run, for s_d.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the tuned runs "
              "[default: RUN-gatekeeper].")
@click.option("--epochs", default=30, show_default=True)
@click.option("--threads", default=0, show_default=True,
              help="CPU threads (torch and BLAS); 0 = every available core.")
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def tune_gatekeeper(run, alphas, stage2, out, epochs, threads, as_json) -> None:
    """Fine-tune a run's head with the Gatekeeper loss for each alpha; save each as a new run."""
    from natix.cascade.gatekeeper import tune_gatekeeper_grid

    try:
        values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise click.BadParameter(f"'{alphas}' is not a comma-separated list of numbers", param_hint="--alpha") from None
    out = out or f"{str(run).rstrip('/')}-gatekeeper"
    rows = tune_gatekeeper_grid(run, out, values, stage2=stage2, epochs=epochs, threads=threads)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    click.echo(f"Gatekeeper on {run} (val_test; recalibrated with Platt on val_calib; fractions)")
    click.echo(f"{'alpha':>6}{'accuracy':>10}{'AUROC_f':>9}{'overlap':>9}{'s_d':>8}  run")
    for r in rows:
        sd = "-" if r["s_d"] is None else f"{r['s_d']:.4f}"
        click.echo(f"{r['alpha']:>6.2f}{r['accuracy']:>10.4f}{r['auroc_f']:>9.4f}{r['overlap']:>9.4f}{sd:>8}  {r['out']}")


@cli.command("cascade")
@click.option("--stage1", required=True, type=click.Path(file_okay=False), help="Cheap run (always runs).")
@click.option("--stage2", required=True, type=click.Path(file_okay=False), help="Stronger run.")
@click.option("--stage3", default=None, help="External model as module:function (images -> probabilities).")
@click.option("--target-risk", type=float, default=None, help="Certified selective risk per stage (LTT).")
@click.option("--delta", default=0.1, show_default=True, help="LTT failure probability.")
@click.option("--budget", type=float, default=None, help="Max fraction deferred past each stage (best reward).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="[default: STAGE1/cascade]")
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def cascade(stage1, stage2, stage3, target_risk, delta, budget, out, as_json) -> None:
    """Choose exit thresholds for a 2-3 stage cascade on val_calib; report it on val_test."""
    from natix.cascade.router import cascade_run

    res = cascade_run(stage1, stage2, stage3=stage3, target_risk=target_risk, delta=delta, budget=budget, out=out)
    doc = json.loads((Path(res["out"]) / "cascade.json").read_text())
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    m, comp = doc["metrics"], doc["compute"]
    click.echo(f"cascade ({doc['mode']}) -> {res['out']}/cascade.json, cascade_curve.csv, cascade_curve.png")
    click.echo(f"thresholds per stage: {doc['router']['thresholds']}")
    click.echo(f"val_test ({m['n']} images; fractions): accuracy {m['accuracy']:.4f}, MCC {m['mcc']:.4f}, "
               f"NATIX reward {m['natix_reward']:.4f}")
    click.echo("reaching stage 2, 3, ...: " + ", ".join(f"{d:.4f}" for d in m["deferral"]))
    gf = comp.get("expected_gflops")
    click.echo("compute per image: " + (f"{gf:.3f} GFLOPs (expected over the routing)" if isinstance(gf, (int, float))
                                        else "unknown (synthetic or unrecognised backbone)"))
    click.echo(f"guarantee: {doc['calibration']['guarantee']}")


@cli.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@_library_errors
def export(run, out) -> None:
    """Export a run (head, calibration, thresholds, failure predictor) as a servable bundle."""
    from natix.serve.bundle import export_bundle

    path = export_bundle(run, out)
    click.echo(f"bundle written to {path}")


@cli.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--backbone", default=None, help="Where the bundle's backbone weights are now (same hash).")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_library_errors
def predict(bundle, paths, backbone, batch_size, as_json) -> None:
    """Probability of roadwork for each image (files or folders), through the bundle."""
    from natix.data.sources import IMAGE_SUFFIXES
    from natix.serve.bundle import load_bundle

    _quiet_transformers()
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise click.BadParameter(f"'{p}' does not exist: pass image files or folders", param_hint="PATHS")
    if not files:
        raise click.BadParameter("no images found in the given paths", param_hint="PATHS")
    model = load_bundle(bundle, backbone=backbone)
    probs = []
    for i in range(0, len(files), batch_size):
        probs.extend(float(x) for x in model.predict_proba(files[i:i + batch_size]))
    if as_json:
        click.echo(json.dumps([{"path": str(f), "probability": p} for f, p in zip(files, probs)], indent=2))
        return
    for f, p in zip(files, probs):
        click.echo(f"{p:.6f}  {f}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="natix")


if __name__ == "__main__":
    sys.exit(main())
