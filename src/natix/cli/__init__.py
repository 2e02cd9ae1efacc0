"""The `natix` command line: parse → config → one library call → short summary.

`group` holds the click group `cli` (one-line errors, the YAML file of defaults) and `main`;
`common` the shared output helpers; each other module registers the commands of one stage of
the data flow on the group when imported: `extract` (demo-data, demo-backbone, extract, cache),
`heads` (fit-head, evaluate, ablate), `calibrate` (calibrate, report), `cascade` (fit-failure,
tune-gatekeeper, cascade), `serve` (export, predict), `finetune` (finetune). Heavy imports (torch, transformers, h5py,
scikit-learn) happen inside commands so that `natix --help` stays instant.
"""

from natix.cli import calibrate, cascade, extract, finetune, heads, serve  # noqa: F401  (importing registers the commands)
from natix.cli.group import cli, main

__all__ = ["cli", "main"]
