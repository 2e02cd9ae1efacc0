"""The cascade curve shows cascade.json's numbers: the router's point, a GFLOPs axis when the cost is
known, a legend that hides nothing, rounded thresholds (cascade_curve.json holds what it drew)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from natix.calibrate.report import rounded
from natix.cascade.evaluation import cascade_run
from natix.cascade.plots import CURVE_COLUMNS, curve_figure, gflops_axis, save_curve
from natix.cli import cli

LONG_NUMBER = re.compile(r"\d\.\d{6,}")


@pytest.fixture(scope="module")
def cascade(runs, tmp_path_factory):
    """A budget cascade of the two synthetic runs, its result and its cascade.json."""
    out = tmp_path_factory.mktemp("cascade-plot") / "c"
    res = cascade_run(runs["stage1"], runs["stage2"], budget=0.3, out=out)
    return {"out": out, "res": res, "doc": json.loads((out / "cascade.json").read_text())}


def test_router_point_and_curve_are_cascade_json(cascade):
    out, doc = cascade["out"], cascade["doc"]
    drawn = json.loads((out / "cascade_curve.json").read_text())
    assert drawn["router"]["deferral"] == doc["metrics"]["deferral"][0]
    assert drawn["router"]["accuracy"] == doc["metrics"]["accuracy"]
    assert drawn["router"]["thresholds"] == [rounded(t) for t in doc["router"]["thresholds"]]
    assert drawn["s_d"] == doc["s_d"]
    with (out / "cascade_curve.csv").open() as fh:
        rows = list(csv.reader(fh))
    table = {c: [float(row[i]) for row in rows[1:]] for i, c in enumerate(rows[0])}
    assert list(drawn["curve"]) == list(CURVE_COLUMNS)
    for c in CURVE_COLUMNS[1:]:  # the threshold column holds -inf/inf, which JSON writes as strings
        assert drawn["curve"][c] == table[c]
    label = drawn["legend"][-1]
    assert label.startswith("router (budget; thresholds ")
    assert f"deferral {doc['metrics']['deferral'][0]:.4f}, accuracy {doc['metrics']['accuracy']:.4f}" in label
    assert drawn["gflops_axis"] is None  # synthetic caches: no backbone, unknown cost


def test_the_legend_sits_outside_the_axes_and_hides_no_point(cascade):
    fig, drawn = curve_figure(cascade["res"])
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    box = ax.get_window_extent()
    assert legend.x0 >= box.x1  # right of the axes
    point = ax.transData.transform((drawn["router"]["deferral"], drawn["router"]["accuracy"]))
    assert not legend.contains(*point) and box.contains(*point)


def test_gflops_axis_maps_deferral_to_expected_compute(cascade, tmp_path):
    res = cascade["res"]
    r = res["deferral"][0]
    known = {**res, "compute": {**res["compute"], "marginal_gflops": [94.0, 350.0], "expected_gflops": 94.0 + 350.0 * r}}
    save_curve(known, tmp_path)
    drawn = json.loads((tmp_path / "cascade_curve.json").read_text())
    assert drawn["gflops_axis"] == {"at_no_deferral": 94.0, "per_deferral": 350.0}
    assert drawn["router"]["expected_gflops"] == pytest.approx(94.0 + 350.0 * r)
    assert f"{94.0 + 350.0 * r:.3f} GFLOPs" in drawn["legend"][-1]
    fig, _ = curve_figure(known)
    fig.canvas.draw()
    top = fig.axes[0].child_axes[0]  # the secondary x-axis
    lo, hi = top.get_xlim()
    assert (lo, hi) == pytest.approx((94.0, 444.0)) and "GFLOPs" in top.get_xlabel()


@pytest.mark.parametrize("marginal", [None, [None, 350.0], [94.0, None], [94.0, 0.0], [94.0]])
def test_no_gflops_axis_without_a_cost_scale(marginal):
    assert gflops_axis({"marginal_gflops": marginal}) is None
    assert gflops_axis(None) is None
    assert gflops_axis({"marginal_gflops": [94.0, 350.0, None]}) == (94.0, 350.0)


def test_cascade_cli_prints_rounded_thresholds(runs, tmp_path):
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(runs["stage1"]), "--stage2", str(runs["stage2"]),
                                 "--budget", "0.3", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c" / "cascade.json").read_text())
    line = next(v for v in r.output.splitlines() if v.startswith("thresholds per stage: "))
    assert line == "thresholds per stage: " + ", ".join(rounded(t) for t in doc["router"]["thresholds"])
    assert not LONG_NUMBER.search(line)
    legend = json.loads((tmp_path / "c" / "cascade_curve.json").read_text())["legend"]
    assert line.removeprefix("thresholds per stage: ") in legend[-1]


def test_infinite_thresholds_print_as_inf(cascade, tmp_path):
    res = {**cascade["res"], "thresholds": [np.inf, 0.1 + 0.2]}
    _, drawn = curve_figure(res)
    assert drawn["router"]["thresholds"] == ["inf", "0.3"]
