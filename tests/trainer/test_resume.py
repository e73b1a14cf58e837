"""Exact resume: a real process SIGKILLed mid-epoch 2 and resumed equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "resume_script.py"


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(out), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def _wait(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=180)
    return p.returncode, err


def _steps(path: Path) -> list[tuple[int, str]]:
    return [(int(s), v) for s, v in (ln.split(",") for ln in path.read_text().splitlines())]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    full_dir, dir_ = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir()
    dir_.mkdir()
    # the uninterrupted run and the one to be killed run side by side
    full_p = _start(full_dir, "full")
    # 8 batches per epoch, a checkpoint every 3 steps: killed at step 13 (epoch 2, batch 5),
    # its last checkpoint is step 12 (epoch 2, 4 batches consumed).
    kill_p = _start(dir_, "kill", "13")
    rc, err = _wait(kill_p)
    assert rc == -signal.SIGKILL, (rc, err)
    assert not (dir_ / "kill.weights.pt").exists()
    ckpt = torch.load(dir_ / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 12)
    assert ckpt["loops"]["fit"]["batches_consumed"] == 4
    resume_p = _start(dir_, "resume")
    rc, err = _wait(full_p)
    assert rc == 0, err
    rc, err = _wait(resume_p)
    assert rc == 0, err

    full = torch.load(full_dir / "full.weights.pt", weights_only=True)
    resumed = torch.load(dir_ / "resume.weights.pt", weights_only=True)
    assert torch.equal(full["weights"], resumed["weights"])
    assert resumed["global_step"] == full["global_step"] == 16
    # the epoch mean of the interrupted epoch covers all its batches (accumulators restored)
    assert torch.equal(full["epoch_loss"], resumed["epoch_loss"])

    full_log = _steps(full_dir / "full.log")
    killed_log = _steps(dir_ / "kill.log")
    resumed_log = _steps(dir_ / "resume.log")
    assert [s for s, _ in full_log] == list(range(16))
    assert [s for s, _ in resumed_log] == list(range(12, 16))  # no gap, no repeat after 11
    assert [s for s, _ in killed_log] == list(range(13))
    kept = [x for x in killed_log if x[0] < 12]
    assert kept + resumed_log == full_log  # same step numbers and the same loss values
