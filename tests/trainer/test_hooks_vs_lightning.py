"""The same module and callback, run by Lightning 2.6 and by our Trainer: the same hook calls in
the same order (fit with validation and a checkpoint, validate, test, predict, a resume).

Needs the optional extra ``compare`` (pytorch-lightning); skipped without it.
"""

from __future__ import annotations

import pytest
import torch
from core_helpers import make_data, make_loader, make_net
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

import trainer as ours  # noqa: E402
from trainer.callbacks import HOOK_NAMES  # noqa: E402

# the module hooks both frameworks define (Lightning 1.x *_epoch_end / *_step_end left out)
MODULE_HOOKS = [
    "prepare_data", "setup", "teardown", "configure_model", "configure_callbacks",
    "configure_optimizers", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start",
    "on_predict_batch_end", "on_validation_model_zero_grad", "on_validation_model_eval",
    "on_validation_model_train", "on_test_model_eval", "on_test_model_train",
    "on_predict_model_eval", "on_before_zero_grad", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_optimizer_setup", "optimizer_zero_grad", "backward",
    "optimizer_step", "lr_scheduler_step", "configure_gradient_clipping",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "on_save_checkpoint", "on_load_checkpoint", "training_step", "validation_step",
    "test_step", "predict_step",
]
# hooks of ours that this Lightning version lacks (on_before_optimizer_setup came after 2.6.6)
MODULE_HOOKS = [n for n in MODULE_HOOKS if hasattr(pl.LightningModule, n)]
CALLBACK_HOOKS = [n for n in HOOK_NAMES if hasattr(pl.Callback, n)]


def _steps(base, automatic):
    """The user's code, written once for both frameworks."""

    class Steps(base):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)
            self.automatic_optimization = automatic

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            if not self.automatic_optimization:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return {"loss": loss}

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return {"x": nn.functional.cross_entropy(self(x), y)}

        def test_step(self, batch, batch_idx):
            return self.validation_step(batch, batch_idx)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]

    return Steps


def _recorded(base, calls, automatic=True):
    def rec(name, original):
        def hook(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            calls.append(name)
            return out
        return hook

    steps = _steps(base, automatic)
    return type("Rec", (steps,), {n: rec(n, getattr(steps, n)) for n in MODULE_HOOKS})()


def _recording_callback(base, calls):
    def rec(name):
        def hook(self, *args, **kwargs):
            calls.append(f"Callback.{name}")
        return hook

    attrs = {n: rec(n) for n in CALLBACK_HOOKS}
    attrs["state_dict"] = lambda self: calls.append("Callback.state_dict") or {"foo": True}
    attrs["load_state_dict"] = lambda self, s: calls.append("Callback.load_state_dict")
    return type("RecCb", (base,), attrs)()


def _run(framework, tmp_path, stages, ckpt_path=None, max_epochs=1, automatic=True):
    calls: list[str] = []
    lightning = framework == "lightning"
    module = _recorded(pl.LightningModule if lightning else ours.TrainModule, calls, automatic)
    cb = _recording_callback(pl.Callback if lightning else ours.Callback, calls)
    kw = dict(default_root_dir=tmp_path / framework, max_epochs=max_epochs,
              limit_train_batches=2, limit_val_batches=2, enable_progress_bar=False,
              logger=False, callbacks=[cb], accelerator="cpu", devices=1)
    if lightning:
        t = pl.Trainer(enable_model_summary=False, **kw)
    else:
        t = ours.Trainer(**kw)
    train = make_loader(make_data(n=32), batch_size=8)
    val = make_loader(make_data(n=16), batch_size=8, shuffle=False)
    out = {}
    for stage in stages:
        calls.clear()
        if stage == "fit":
            t.fit(module, train, val, ckpt_path=ckpt_path)
        elif stage == "predict":
            t.predict(module, val)
        else:
            getattr(t, stage)(module, val)
        out[stage] = list(calls)
    ckpt = t.checkpoint_callback.best_model_path if stages[0] == "fit" else None
    return out, ckpt


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("automatic", [True, False])
def test_same_hook_calls_as_lightning(tmp_path, automatic):
    stages = ["fit", "validate", "test", "predict"]
    theirs, _ = _run("lightning", tmp_path, stages, automatic=automatic)
    mine, _ = _run("ours", tmp_path, stages, automatic=automatic)
    assert len(theirs["fit"]) > 100
    for stage in stages:
        assert mine[stage] == theirs[stage], stage


@pytest.mark.filterwarnings("ignore")
def test_same_hook_calls_as_lightning_on_resume(tmp_path):
    _, their_ckpt = _run("lightning", tmp_path, ["fit"])
    _, my_ckpt = _run("ours", tmp_path, ["fit"])
    theirs, _ = _run("lightning", tmp_path, ["fit"], ckpt_path=their_ckpt, max_epochs=2)
    mine, _ = _run("ours", tmp_path, ["fit"], ckpt_path=my_ckpt, max_epochs=2)
    assert mine["fit"] == theirs["fit"]
