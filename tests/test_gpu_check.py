"""benchmarks/gpu_check.sh, the one prepared device check: its --dry-run on the CPU (tiny
model, few steps) runs every check a CPU can and exits 0; a failing check exits 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip


def test_the_dry_run_passes_every_check_a_cpu_can_run(tmp_path):
    result = gpu_check("--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line[:5] in ("PASS ", "FAIL ", "SKIP ")]
    status = {line[5:].split(":")[0]: line[:4] for line in lines}
    assert status["jpeg_kinds"] == status["fsdp_dcp"] == "PASS", lines
    assert status["train eager + eval + gpu-decode hflip accum 2"] == "PASS", lines
    assert status["decode_race"] == status["syncs"] == status["compile"] == "SKIP"  # need CUDA
    assert "FAIL" not in status.values()
    # a check that fails is a FAIL line and exit status 1, the other checks still reported
    failing = gpu_check("--out", str(tmp_path), "--only", "no_such_check,jpeg_kinds")
    assert failing.returncode == 1
    assert "FAIL no_such_check" in failing.stdout and "PASS jpeg_kinds" in failing.stdout
