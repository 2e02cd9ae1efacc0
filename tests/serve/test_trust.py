"""A bundle decides no code and no out-of-range value: external stages load only when the caller
names them, every manifest field is checked on load, and signed bundles refuse a wrong key."""

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from natix.cli import cli
from natix.errors import ConfigError, DataError
from natix.serve import export_bundle, load_bundle

KEY = b"k" * 32


def one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.fixture
def cascade_bundle(cascade_dir, tmp_path):
    """A fresh two-stage cascade bundle (no external stage)."""
    return export_bundle(cascade_dir / "casc-bundle", tmp_path / "cascade-bundle")


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A module that leaves a marker file when imported and answers 0.75 per image."""
    marker = tmp_path / "imported"
    (tmp_path / "trap_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
        "def run(images):\n    return [0.75 for _ in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trap_mod", raising=False)
    return marker


def add_external(rewrite, b, spec: str) -> None:
    """What an attacker with write access does: an external last stage and a router entry for it."""
    def edit(m):
        m["stages"].append({"external": spec})
        m["router"]["thresholds"].append(0.5)
    rewrite(b, edit)


# --------------------------------------------------------------------------- external stages


@pytest.mark.parametrize("spec", ["trap_mod:run", "pprint:pprint"])
def test_an_external_stage_in_the_manifest_is_never_imported_unless_named(cascade_bundle, trap, rewrite, spec):
    add_external(rewrite, cascade_bundle, spec)
    with pytest.raises(ConfigError, match=f"external stage '{spec}'.*pass load_bundle\\(\\.\\.\\., external='{spec}'\\) "
                                          f"or natix predict --stage3 {spec}") as info:
        load_bundle(cascade_bundle)
    one_line(info)
    assert not trap.exists() and "trap_mod" not in sys.modules
    with pytest.raises(ConfigError, match="external stage 'other_mod:fn' is not the bundle's 'trap_mod:run'|"
                                          "is not the bundle's"):
        load_bundle(cascade_bundle, external="other_mod:fn")
    assert not trap.exists()


def test_a_named_external_stage_loads_by_spec_or_callable(cascade_bundle, trap, rewrite, served):
    add_external(rewrite, cascade_bundle, "trap_mod:run")
    bundle = load_bundle(cascade_bundle, external="trap_mod:run")
    assert trap.exists() and "external='trap_mod:run'" in repr(bundle)
    import trap_mod

    by_callable = load_bundle(cascade_bundle, external=trap_mod.run)
    paths = served.paths
    np.testing.assert_array_equal(bundle.roadwork_probability(paths), by_callable.roadwork_probability(paths))
    with pytest.raises(ConfigError, match="external stage 'builtins:print' is not the bundle's 'trap_mod:run'"):
        load_bundle(cascade_bundle, external=print)


def test_an_external_stage_for_a_bundle_without_one_is_refused(cascade_bundle, trap):
    with pytest.raises(ConfigError, match="has no external stage: drop external="):
        load_bundle(cascade_bundle, external="trap_mod:run")
    assert not trap.exists()


def test_predict_stage3_names_the_external_stage(cascade_bundle, trap, rewrite, served):
    add_external(rewrite, cascade_bundle, "trap_mod:run")
    r = CliRunner().invoke(cli, ["predict", str(cascade_bundle), served.paths[0]])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "--stage3 trap_mod:run" in r.output
    assert not trap.exists()
    r = CliRunner().invoke(cli, ["predict", str(cascade_bundle), *served.paths[:3], "--stage3", "trap_mod:run",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 3


# --------------------------------------------------------------------------- field checks


def _set(*keys, value):
    def edit(m):
        obj = m
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, field", [
    (_set("prior", value=5.0), "prior"),
    (_set("prior", value=-3), "prior"),
    (_set("prior", value=None), "prior"),
    (_set("prior", value=True), "prior"),
    (_set("prior", value="0.5"), "prior"),
    (_set("stages", 0, "store_dtype", value="complex128"), "stages\\[0\\].store_dtype"),
    (_set("stages", 0, "precision", value="int4"), "stages\\[0\\].precision"),
    (_set("stages", 0, "pool", value="max"), "stages\\[0\\].pool"),
    (_set("stages", 0, "extractor_version", value=True), "stages\\[0\\].extractor_version"),
    (_set("stages", 0, "calibration", "state", "coef_", value=1e308), "stages\\[0\\].calibration"),
    (_set("stages", 0, "calibration", "state", "coef_", value=None), "stages\\[0\\].calibration"),
    (_set("stages", 0, "calibration", "state", "intercept_", value="inf"), "stages\\[0\\].calibration"),
    (_set("stages", 0, "calibration", "decision_threshold", value=7.0), "stages\\[0\\].calibration"),
    (_set("stages", 0, "head", "dim", value=0), "stages\\[0\\].head.dim"),
    (_set("stages", 0, "head", "dim", value=-32), "stages\\[0\\].head.dim"),
    (_set("stages", 0, "head", "dim", value=48), "stages\\[0\\].head.dim"),
    (_set("stages", 0, "head", "n_views", value=3), "stages\\[0\\].head.n_views"),
    (_set("stages", 0, "head", "n_views", value=10.0), "stages\\[0\\].head.n_views"),
    (_set("stages", 0, "head", "view_names", value=["global"]), "stages\\[0\\].head.view_names"),
    (_set("stages", 0, "backbone", "weights_sha256", value="0" * 12), "stages\\[0\\].backbone.weights_sha256"),
    (_set("stages", 0, "head_file", value="../outside.safetensors"), "stages\\[0\\].head_file"),
    (_set("stages", 0, "failure_file", value="stage0_head.safetensors"), "stages\\[0\\].failure"),
    (_set("stages", 0, "surprise", value=1), "stages\\[0\\].surprise"),
    (_set("surprise", value=1), "surprise"),
    (_set("files", "stage0_head.safetensors", value="not a hash"), "files"),
    (_set("stages", 0, "backbone", "local", "spec", value={"absolute": "not/absolute", "relative": None}),
     "stages\\[0\\].backbone.local.spec"),
    (_set("stages", 0, "backbone", "local", "spec", value="/a/path"), "stages\\[0\\].backbone.local.spec"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_manifest_field_out_of_schema_or_range_is_refused(served, tmp_path, rewrite, edit, field):
    b = shutil.copytree(served.calibrated, tmp_path / "bundle")
    rewrite(b, edit)
    with pytest.raises(DataError, match=f"manifest.json .*{field}.*re-export the bundle") as info:
        load_bundle(b)
    one_line(info)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["router"].update(thresholds=[None]), "router.thresholds"),
    (lambda m: m["router"].update(mode="yolo"), "router.mode"),
    (lambda m: m["router"].update(confidence=["gate", "max_prob"]), "router.confidence"),
    (lambda m: m["stages"].append({"external": "os:system; rm -rf"}), "stages\\[2\\].external"),
    (lambda m: m["stages"].append({"external": "trap_mod:run", "extra": 1}), "stages\\[2\\]"),
], ids=["nan-threshold", "mode", "confidence", "external-spec", "external-extra"])
def test_a_router_or_external_entry_out_of_schema_is_refused(cascade_bundle, rewrite, trap, edit, field):
    def edit_and_route(m):
        edit(m)
        if len(m["stages"]) == 3:
            m["router"]["thresholds"].append(0.5)
    rewrite(cascade_bundle, edit_and_route)
    with pytest.raises(DataError, match=f"manifest.json .*{field}.*re-export the bundle") as info:
        load_bundle(cascade_bundle, external="trap_mod:run")
    one_line(info)
    assert not trap.exists()


def test_inf_router_thresholds_and_prior_bounds_are_allowed(cascade_bundle, rewrite):
    rewrite(cascade_bundle, lambda m: m.update(prior=1) or m["router"].update(thresholds=["-inf"]))
    bundle = load_bundle(cascade_bundle)
    assert bundle.prior == 1.0 and bundle.thresholds == [float("-inf")]


# --------------------------------------------------------------------------- signing


def test_a_signed_bundle_verifies_and_refuses_another_key_or_an_edit(served, tmp_path, rewrite):
    key_file = tmp_path / "bundle.key"
    key_file.write_bytes(KEY)
    b = export_bundle(served.run, tmp_path / "signed", sign_key=key_file)
    signature = json.loads((b / "manifest.json").read_text())["signature"]
    assert signature["alg"] == "hmac-sha256" and len(signature["value"]) == 64
    expected = load_bundle(served.calibrated).roadwork_probability(served.paths[:2])
    np.testing.assert_array_equal(load_bundle(b, verify_key=KEY).roadwork_probability(served.paths[:2]), expected)
    load_bundle(b, verify_key=key_file)  # a key file reads as its bytes
    load_bundle(b)  # without a key a signed bundle loads as any other
    with pytest.raises(DataError, match="signature does not match the verify key") as info:
        load_bundle(b, verify_key=b"x" * 32)
    one_line(info)
    rewrite(b, lambda m: m.update(prior=0.01))  # a consistent digest, but not the key holder's
    with pytest.raises(DataError, match="signature does not match"):
        load_bundle(b, verify_key=KEY)


def test_an_unsigned_bundle_is_refused_when_a_key_is_given(served, tmp_path, rewrite):
    with pytest.raises(DataError, match="is not signed.*sign-key") as info:
        load_bundle(served.plain, verify_key=KEY)
    one_line(info)
    b = export_bundle(served.run, tmp_path / "signed", sign_key=KEY)
    rewrite(b, lambda m: m.pop("signature"))
    with pytest.raises(DataError, match="is not signed"):
        load_bundle(b, verify_key=KEY)
    rewrite(b, lambda m: m.update(signature={"alg": "md5", "value": "0" * 32}))
    with pytest.raises(DataError, match="signature"):
        load_bundle(b)


@pytest.mark.parametrize("key, match", [
    (b"", "at least 16 bytes"),
    (b"short", "at least 16 bytes"),
    ("no-such-key-file", "key file 'no-such-key-file' cannot be read"),
    (42, "pass bytes or a key file"),
])
def test_bad_keys_are_refused_in_one_line(served, tmp_path, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        export_bundle(served.run, tmp_path / "b", sign_key=key)
    one_line(info)
    with pytest.raises(ConfigError, match=match):
        load_bundle(served.plain, verify_key=key)


def test_cli_export_sign_key_and_predict_verify_key(served, tmp_path):
    key_file, other = tmp_path / "k", tmp_path / "other"
    key_file.write_bytes(KEY)
    other.write_bytes(b"o" * 32)
    r = CliRunner().invoke(cli, ["export", str(served.run), "--out", str(tmp_path / "b"), "--sign-key", str(key_file)])
    assert r.exit_code == 0, r.output
    ok = CliRunner().invoke(cli, ["predict", str(tmp_path / "b"), served.paths[0], "--verify-key", str(key_file)])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["predict", str(tmp_path / "b"), served.paths[0], "--verify-key", str(other)])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "signature does not match" in bad.output


def test_a_bundle_written_before_signing_and_local_paths_still_loads(served, tmp_path, rewrite):
    b = shutil.copytree(served.plain, tmp_path / "old")

    def as_before(m):  # only the fields natix-bundle/1 always had
        m.pop("signature", None)
        for st in m["stages"]:
            st["backbone"].pop("local", None)
    rewrite(b, as_before)
    np.testing.assert_array_equal(load_bundle(b).roadwork_probability(served.paths[:2]),
                                  load_bundle(served.plain).roadwork_probability(served.paths[:2]))
