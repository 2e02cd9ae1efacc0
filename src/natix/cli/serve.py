"""Serving commands: `export` (a run or cascade as a bundle) and `predict` (images through it)."""

from __future__ import annotations

from pathlib import Path

import click

from natix.cli.common import COUNT, echo_result, force_option, json_option, quiet_transformers
from natix.cli.group import cli, library_errors


@cli.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@force_option("natix bundle (swapped in whole once the new one is complete)")
@click.option("--sign-key", type=click.Path(dir_okay=False), default=None,
              help="Key file (>= 16 bytes): sign the manifest with HMAC-SHA256, for bundles that travel.")
@json_option
@library_errors
def export(run, out, force, sign_key, as_json) -> None:
    """Export a run (head, calibration, thresholds, failure predictor) as a servable bundle."""
    from natix.serve.export import export_bundle

    written = export_bundle(run, out, sign_key=sign_key, replace=force)
    echo_result(as_json, {"bundle": written, "signed": sign_key is not None},
                lambda w: f"bundle written to {w['bundle']}{' (signed)' if w['signed'] else ''}")


def image_files(paths) -> list[Path]:
    """The image files named by `paths`: files as given, folders searched as `natix extract` does."""
    from natix.data.sources import images_below

    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += images_below(p)
        elif p.is_file():
            files.append(p)
        else:
            raise click.BadParameter(f"'{p}' does not exist: pass image files or folders", param_hint="PATHS")
    if not files:
        raise click.BadParameter("no images found in the given paths", param_hint="PATHS")
    return files


@cli.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--backbone", default=None, help="Where the bundle's backbone weights are now (same hash).")
@click.option("--checkpoint", default=None, help="Where the bundle's timm checkpoint file is now (same hash).")
@click.option("--adapter", default=None, help="Where the bundle's PEFT adapter directory is now (same hash).")
@click.option("--stage3", default=None,
              help="The cascade's external stage as module:function (found in the current folder or on "
                   "PYTHONPATH); must be the one the bundle declares.")
@click.option("--verify-key", type=click.Path(dir_okay=False), default=None,
              help="Key file: refuse the bundle unless it was signed with this key (natix export --sign-key).")
@click.option("--batch-size", type=COUNT, default=16, show_default=True)
@json_option
@library_errors
def predict(bundle, paths, backbone, checkpoint, adapter, stage3, verify_key, batch_size, as_json) -> None:
    """Probability of roadwork for each image (files or folders), through the bundle."""
    from natix.serve.bundle import load_bundle

    files = image_files(paths)
    quiet_transformers()
    served = load_bundle(bundle, backbone=backbone, checkpoint=checkpoint, adapter=adapter, external=stage3,
                         verify_key=verify_key)
    probs, stage = served.roadwork_probability(files, batch_size=batch_size, return_stage=True)
    # "prior": the image could not be answered (not decoded): its answer is the bundle's prior.
    rows = [{"path": f, "probability": float(p), "prior": bool(k < 0)} for f, p, k in zip(files, probs, stage)]
    echo_result(as_json, rows, lambda rows: "\n".join(
        f"{r['probability']:.6f}  {r['path']}" + ("  (prior: not decoded)" if r["prior"] else "") for r in rows))
