import json

from click.testing import CliRunner

from natix.cli import cli


def test_cascade_cli_budget_and_bad_budget(chain):
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(chain / "s1"), "--stage2", str(chain / "s2"),
                                 "--budget", "0.5", "--out", str(chain / "casc")])
    assert r.exit_code == 0, r.output
    assert "reward_ordered" in r.output and "GFLOPs" in r.output
    doc = json.loads((chain / "casc" / "cascade.json").read_text())
    assert doc["mode"] == "budget" and (chain / "casc" / "cascade_curve.png").is_file()
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(chain / "s1"), "--stage2", str(chain / "s2"),
                                 "--budget", "1.5"])
    # refused before any work: a usage error (exit 2) or a one-line library error (exit 1)
    assert r.exit_code in (1, 2) and "budget" in r.output.splitlines()[-1] and "Traceback" not in r.output


def test_export_then_predict_reproduces_the_run(chain, tmp_path):
    import numpy as np

    from natix.cache.store import open_cache

    r = CliRunner().invoke(cli, ["export", str(chain / "s2"), "--out", str(tmp_path / "bundle")])
    assert r.exit_code == 0, r.output
    with np.load(chain / "s2" / "predictions" / "val_test.npz") as z:
        ids, stored = z["ids"], z["prob"]
    [h5] = (chain / "c10").glob("*.h5")
    with open_cache(h5) as c:
        path_of = dict(zip(c.ids.tolist(), c.paths.tolist()))
    paths = [path_of[i] for i in ids.tolist()]
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "bundle"), *paths, "--json"])
    assert r.exit_code == 0, r.output
    got = np.array([row["probability"] for row in json.loads(r.stdout)])
    np.testing.assert_allclose(got, stored, atol=1e-5)
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "bundle"), str(tmp_path / "missing.jpg")])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "bundle" / "stage0_head.safetensors").write_bytes(b"tampered")
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "bundle"), paths[0]])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "stage0_head.safetensors" in r.output


def test_predict_refuses_a_batch_size_below_one_before_loading(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    for bad in ("0", "-2", "nan"):
        r = CliRunner().invoke(cli, ["predict", str(tmp_path / "no-bundle"), str(image), "--batch-size", bad])
        assert r.exit_code == 2 and "--batch-size" in r.output and "Traceback" not in r.output, r.output


def test_export_replaces_a_bundle_only_with_force(chain, tmp_path):
    bundle = tmp_path / "bundle"
    args = ["export", str(chain / "s2"), "--out", str(bundle)]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"bundle": str(bundle), "signed": False}
    manifest = (bundle / "manifest.json").read_bytes()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"'{bundle}' already holds a natix bundle: pass --force to replace it, or a new --out" in r.output
    assert (bundle / "manifest.json").read_bytes() == manifest
    r = CliRunner().invoke(cli, ["export", str(chain / "s1"), "--out", str(bundle), "--force"])
    assert r.exit_code == 0, r.output
    assert json.loads((bundle / "manifest.json").read_text())["source_run"] == str((chain / "s1").resolve())
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(cli, ["export", str(chain / "s2"), "--out", str(foreign), "--force"])
    assert r.exit_code == 1 and "exists and is not a natix bundle" in r.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
