"""benchmarks/extract_gpu.py: its CPU smoke mode runs every step of the GPU run and reports them as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "extract_gpu.py"
ROWS = {"natix", "naive", "dataloader_pil_bf16", "backbone_alone"}


def _run(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *options, "--json-out", str(out), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    return proc, out


def test_smoke_mode_runs_every_step_and_writes_them_as_json(tmp_path):
    proc, out = _run(tmp_path, "--device", "cpu", "--arch", "tiny", "--images", "8", "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status"] == "passed"

    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == ROWS
    for r in rows.values():
        assert r["images"] > 0 and r["images_per_s"] > 0 and r["views_per_s"] == pytest.approx(10 * r["images_per_s"])
        assert r["tflops"] > 0 and r["mfu"] > 0
    assert rows["natix"]["natix_over_row"] == pytest.approx(1.0)
    assert rows["natix"]["images"] == 8 and rows["naive"]["images"] == 8

    checks = report["checks"]
    cpu = checks["cpu_vs_device"]
    assert cpu["passed"] and cpu["images"] == 4 and cpu["view_rows"] == 40 and cpu["min_cosine"] >= 0.99
    oom = checks["oom_backoff"]
    assert oom["seen"] and oom["passed"] and oom["raised"] == 1
    assert oom["batch_size"] == 64 and oom["settled_batch_size"] == 4  # 8 images in one batch, halved once
    assert oom["warnings"] == ["CUDA out of memory: retrying the same images 4 per forward"]
    assert checks["path"]["passed"] and checks["path"]["views_cut_on"] == ["dataloader workers"]
    assert checks["path"]["loaders"] == [{"workers": 1, "pin_memory": False}]

    assert all(t["status"] == "n/a: targets apply to CUDA only" and t["pass"] is None for t in report["targets"])
    assert "targets apply to CUDA only" in proc.stdout
    assert "| natix extract (end to end) | 8 |" in proc.stdout
    assert not list(tmp_path.glob("natix-gpu-bench-*"))  # its images, backbone and caches are removed


def test_asking_for_a_missing_gpu_fails_at_once_in_one_line_and_says_so_in_the_json(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    proc, out = _run(tmp_path, "--device", "cuda")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda was asked for but no CUDA GPU is visible: pass --device cpu"]
    assert json.loads(out.read_text())["status"].startswith("failed: SystemExit: error: --device cuda")
