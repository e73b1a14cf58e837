"""CUDA paths: batch transfer, bf16-mixed, 16-mixed with a GradScaler, deferred NaN check.

Skipped where no CUDA device is present.
"""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import NonFiniteLossError, Trainer
from trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _t(**kw):
    return Trainer(accelerator="cuda", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, num_sanity_val_steps=0, **kw)


class Seen(TinyModule):
    def __init__(self):
        super().__init__()
        self.devices, self.dtypes = set(), set()

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.devices.add(x.device.type)
        out = self(x)
        self.dtypes.add(out.dtype)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.log("loss", loss, on_epoch=True, prog_bar=True)
        return loss


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32),
                                             ("bf16-mixed", torch.bfloat16),
                                             ("16-mixed", torch.float16)])
def test_precisions_on_cuda(tmp_path, precision, dtype):
    m = Seen()
    t = _t(max_epochs=2, precision=precision, gradient_clip_val=1.0)
    t.fit(m, make_loader(make_data(n=64), pin_memory=True))
    assert m.devices == {"cuda"} and m.dtypes == {dtype}
    assert t.callback_metrics["loss_epoch"].device.type == "cuda"
    assert t.precision_plugin.scaler.is_enabled() == (precision == "16-mixed")
    t.save_checkpoint(tmp_path / "c.ckpt")
    ck = load_checkpoint(tmp_path / "c.ckpt")
    assert bool(ck["precision"]) == (precision == "16-mixed")
    assert "cuda" in ck["rng"]


def test_nonfinite_loss_found_without_per_step_sync():
    class Bad(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx == 3 else loss

    with pytest.raises(NonFiniteLossError, match="epoch 0, between global steps 0 and"):
        _t(max_epochs=1).fit(Bad(), make_loader(make_data(n=64)))


def test_nonfinite_loss_skip_on_cuda():
    class Bad(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx == 3 else loss

    t = _t(max_epochs=1, on_nonfinite_loss="skip")
    m = Bad()
    t.fit(m, make_loader(make_data(n=64)))
    assert t.global_step == 7
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_manual_backward_uses_the_scaler():
    class Manual(TinyModule):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    t = _t(max_epochs=1, precision="16-mixed")
    t.fit(Manual(), make_loader(make_data(n=32)))
    assert t.global_step == 4 and t.precision_plugin.scaler.get_scale() > 0
