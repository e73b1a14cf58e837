"""Run by test_resume.py in a subprocess: train 2 epochs, maybe SIGKILL itself, maybe resume.

usage: resume_script.py OUT_DIR MODE [KILL_AT_STEP]
MODE: 'full' (2 epochs in one go), 'kill' (SIGKILL at KILL_AT_STEP), 'resume' (from last.ckpt).
Writes OUT_DIR/<mode>.weights.pt at the end and OUT_DIR/<mode>.log with 'step,loss' lines.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parent))
from core_helpers import TinyModule, flat  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import Callback  # noqa: E402
from trainer.loggers import Logger  # noqa: E402

CKPT_EVERY = 3


class NoisyData(Dataset):
    """Augments with the global torch RNG when a sample is loaded."""

    def __init__(self, n: int = 60) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * torch.randn(8), self.y[i]


class NoisyModule(TinyModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + torch.from_numpy(np.random.normal(0, 0.01, x.shape).astype(np.float32))
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss


class SaveEvery(Callback):
    def __init__(self, path: Path, every: int, kill_at: int | None) -> None:
        self.path, self.every, self.kill_at = path, every, kill_at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            trainer.save_checkpoint(self.path)
        if self.kill_at is not None and trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class LineLogger(Logger):
    def __init__(self, path: Path) -> None:
        self.path = path

    def log_metrics(self, metrics, step):
        if "loss_step" in metrics:
            with open(self.path, "a") as f:
                f.write(f"{step},{metrics['loss_step']!r}\n")


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    torch.manual_seed(7)
    np.random.seed(7)
    dl = DataLoader(NoisyData(), batch_size=8, shuffle=True,
                    generator=torch.Generator().manual_seed(3))
    module = NoisyModule(dropout=0.3)
    ckpt = out / "last.ckpt"
    trainer = Trainer(max_epochs=2, log_every_n_steps=1, enable_progress_bar=False,
                      enable_checkpointing=False, logger=LineLogger(out / f"{mode}.log"),
                      callbacks=[SaveEvery(ckpt, CKPT_EVERY, kill_at)])
    trainer.fit(module, dl, ckpt_path=ckpt if mode == "resume" else None)
    torch.save({"weights": flat(module), "epoch_loss": trainer.callback_metrics["loss_epoch"],
                "global_step": trainer.global_step}, out / f"{mode}.weights.pt")


if __name__ == "__main__":
    main()
