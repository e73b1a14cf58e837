"""Every hook a user overrides is called, in Lightning 2.6's order, with Lightning's arguments.

The expected sequences follow Lightning's own test (tests/tests_pytorch/models/test_hooks.py,
``HookedModel`` / ``HookedCallback``): a module and a callback that override every hook, each
call recorded when it returns (so ``optimizer_step``, which runs the closure with
training_step and backward inside it, comes after them, as in Lightning's lists).
"""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import Trainer
from trainer.callbacks import HOOK_NAMES, Callback
from trainer.module import TrainModule

# every overridable hook of TrainModule (steps included), recorded on return
MODULE_HOOKS = sorted(
    name for name, fn in vars(TrainModule).items()
    if callable(fn) and not name.startswith("_") and (
        name.startswith("on_") or name.startswith("configure_") or name.endswith("_step")
        or name in ("setup", "teardown", "prepare_data", "backward", "optimizer_zero_grad",
                    "transfer_batch_to_device"))
    and name not in ("lr_schedulers",)
)
# Lightning 1.x step_end / epoch_end hooks are not part of Lightning 2.6's sequence
MODULE_HOOKS = [n for n in MODULE_HOOKS if not n.endswith(("_step_end",))]


def _module_recorder(name, calls, original):
    def hook(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append((name, args))
        return out
    return hook


def make_module(calls, automatic=True, **kw):
    attrs = {n: _module_recorder(n, calls, getattr(Hooked, n)) for n in MODULE_HOOKS}
    cls = type("RecModule", (Hooked,), attrs)
    m = cls(**kw)
    m.automatic_optimization = automatic
    return m


class Hooked(TinyModule):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step(lambda: self._calls_closure())
        return {"loss": loss}

    def _calls_closure(self):
        self.closure_calls.append(("closure", ()))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])


class RecCallback(Callback):
    def __init__(self, calls):
        self.calls = calls

    def state_dict(self):
        self.calls.append(("Callback.state_dict", ()))
        return {"foo": True}

    def load_state_dict(self, state_dict):
        self.calls.append(("Callback.load_state_dict", (state_dict,)))


def _cb_recorder(name):
    def hook(self, trainer, module, *args):
        self.calls.append((f"Callback.{name}", args))
    return hook


for _name in HOOK_NAMES:
    setattr(RecCallback, _name, _cb_recorder(_name))


# ------------------------------------------------------------------ expected sequences
def transfer():
    return ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def eval_batches(noun, n):
    out = []
    for _ in range(n):
        out += transfer() + [f"Callback.on_{noun}_batch_start", f"on_{noun}_batch_start",
                             f"{noun}_step", f"Callback.on_{noun}_batch_end",
                             f"on_{noun}_batch_end"]
    return out


def eval_run(noun, n):
    return ([f"on_{noun}_model_eval", f"Callback.on_{noun}_start", f"on_{noun}_start",
             f"Callback.on_{noun}_epoch_start", f"on_{noun}_epoch_start"]
            + eval_batches(noun, n)
            + [f"Callback.on_{noun}_epoch_end", f"on_{noun}_epoch_end",
               f"Callback.on_{noun}_end", f"on_{noun}_end", f"on_{noun}_model_train"])


def auto_batches(n, last_of_epoch=True):
    out = []
    for i in range(n):
        out += transfer() + [
            "Callback.on_train_batch_start", "on_train_batch_start", "training_step",
            "Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad",
            "Callback.on_before_backward", "on_before_backward", "backward",
            "Callback.on_after_backward", "on_after_backward",
            "Callback.on_before_optimizer_step", "on_before_optimizer_step",
            "configure_gradient_clipping", "optimizer_step"]
        if last_of_epoch and i == n - 1:
            out.append("lr_scheduler_step")  # the epoch scheduler, after the last batch
        out += ["Callback.on_train_batch_end", "on_train_batch_end"]
    return out


def manual_batches(n):
    out = []
    for _ in range(n):
        out += transfer() + [
            "Callback.on_train_batch_start", "on_train_batch_start",
            "Callback.on_before_backward", "on_before_backward", "backward",
            "Callback.on_after_backward", "on_after_backward",
            "closure", "Callback.on_before_optimizer_step", "on_before_optimizer_step",
            "training_step", "Callback.on_train_batch_end", "on_train_batch_end"]
    return out


def start(stage, resumed=False):
    out = ["configure_callbacks", "prepare_data", "Callback.setup", "setup", "configure_model"]
    if resumed:
        out += ["on_load_checkpoint", "Callback.on_load_checkpoint", "Callback.load_state_dict"]
    if stage == "fit":
        out += ["Callback.on_before_optimizer_setup", "on_before_optimizer_setup",
                "configure_optimizers", "Callback.on_fit_start", "on_fit_start"]
    return out


def end(stage):
    fit_end = ["Callback.on_train_end", "on_train_end", "Callback.on_fit_end", "on_fit_end"]
    return (fit_end if stage == "fit" else []) + ["Callback.teardown", "teardown"]


SAVE = ["Callback.state_dict", "Callback.on_save_checkpoint", "on_save_checkpoint"]


def names(calls):
    return [c[0] for c in calls]


def _trainer(calls, tmp_path, **kw):
    return Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                   callbacks=[RecCallback(calls)], limit_train_batches=2, limit_val_batches=2,
                   **kw)


def _data(n=32):
    return make_loader(make_data(n=n), batch_size=8), make_loader(make_data(n=n), 8,
                                                                   shuffle=False)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("automatic", [True, False])
def test_fit_calls_every_hook_in_lightnings_order(tmp_path, automatic):
    calls: list = []
    module = make_module(calls, automatic)
    module.closure_calls = calls
    train, val = _data()
    trainer = _trainer(calls, tmp_path, max_epochs=1)
    trainer.fit(module, train, val)
    batches = auto_batches(2) if automatic else manual_batches(2)
    expected = (
        start("fit")
        + ["Callback.on_sanity_check_start"] + eval_run("validation", 2)
        + ["Callback.on_sanity_check_end", "Callback.on_train_start", "on_train_start",
           "Callback.on_train_epoch_start", "on_train_epoch_start"]
        + batches
        + ["on_validation_model_zero_grad"] + eval_run("validation", 2)
        + ["Callback.on_train_epoch_end", "on_train_epoch_end"] + SAVE
        + end("fit"))
    assert names(calls) == expected


def test_fit_hook_arguments(tmp_path):
    calls: list = []
    module = make_module(calls)
    train, val = _data()
    trainer = _trainer(calls, tmp_path, max_epochs=1, gradient_clip_val=0.5,
                       gradient_clip_algorithm="value")
    trainer.fit(module, train, val)
    args = {}
    for name, a in calls:
        args.setdefault(name, []).append(a)
    epoch, idx, opt, closure = args["optimizer_step"][1]
    assert (epoch, idx) == (0, 1) and callable(closure)
    assert opt.optimizer is trainer.optimizers[0]  # the wrapper Lightning passes too
    assert args["optimizer_zero_grad"][0] == (0, 0, trainer.optimizers[0])
    assert args["configure_gradient_clipping"][0][1:] == (0.5, "value")
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert args["lr_scheduler_step"] == [(sched, None)]
    assert args["on_before_batch_transfer"][0][1] == 0
    assert args["transfer_batch_to_device"][0][1:] == (torch.device("cpu"), 0)
    assert args["on_train_batch_end"][1][2] == 1  # (outputs, batch, batch_idx)
    assert set(args["on_train_batch_end"][1][0]) == {"loss"}
    assert args["Callback.setup"] == [("fit",)] and args["setup"] == [("fit",)]


def test_validate_test_predict_call_every_hook_in_lightnings_order(tmp_path):
    calls: list = []
    module = make_module(calls)
    _, val = _data(16)
    trainer = _trainer(calls, tmp_path)
    trainer.validate(module, val)
    assert names(calls) == start("validate") + eval_run("validation", 2) + end("validate")
    calls.clear()
    trainer.test(module, val)
    assert names(calls) == start("test") + eval_run("test", 2) + end("test")
    calls.clear()
    trainer.predict(module, val)
    predict = (["on_predict_model_eval", "Callback.on_predict_start", "on_predict_start",
                "Callback.on_predict_epoch_start", "on_predict_epoch_start"]
               + eval_batches("predict", 2)
               + ["Callback.on_predict_epoch_end", "on_predict_epoch_end",
                  "Callback.on_predict_end", "on_predict_end"])
    assert names(calls) == start("predict") + predict + end("predict")


def test_resume_calls_checkpoint_hooks_in_lightnings_order(tmp_path):
    train, _ = _data()
    first = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                    max_epochs=1, limit_train_batches=2, callbacks=[RecCallback([])])
    first.fit(make_module([]), train)
    ckpt = first.checkpoint_callback.best_model_path or first.checkpoint_callback.last_model_path
    calls: list = []
    module = make_module(calls)
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                      max_epochs=2, limit_train_batches=2, callbacks=[RecCallback(calls)])
    trainer.fit(module, train, ckpt_path=ckpt)
    expected = (start("fit", resumed=True)
                + ["Callback.on_train_start", "on_train_start",
                   "Callback.on_train_epoch_start", "on_train_epoch_start"]
                + auto_batches(2)
                + ["Callback.on_train_epoch_end", "on_train_epoch_end"] + SAVE + end("fit"))
    assert names(calls) == expected
    loaded = dict(calls)["Callback.load_state_dict"]
    assert loaded == ({"foo": True},)


class CountingCallback(Callback):
    def __init__(self, tag):
        self.tag = tag


class CountingChild(CountingCallback):
    pass


class Other(Callback):
    pass


def test_configure_callbacks_replace_trainer_callbacks_of_their_type(tmp_path):
    from trainer.callbacks import ModelCheckpoint

    returned = [CountingChild("module"), ModelCheckpoint(dirpath=tmp_path / "m")]

    class M(TinyModule):
        def configure_callbacks(self):
            return returned

    keep = Other()
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                      max_epochs=1, callbacks=[CountingCallback("trainer"), keep])
    trainer.fit(M(), make_loader(make_data(n=16)))
    assert trainer.callbacks[0] is keep
    assert trainer.callbacks[1:] == returned  # the checkpoint callback last
    assert not any(getattr(c, "tag", None) == "trainer" for c in trainer.callbacks)


def test_refused_hook_is_one_line_naming_it():
    class Old(TinyModule):
        def configure_sharded_model(self):
            pass

    t = Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False)
    with pytest.raises(TypeError) as e:
        t.fit(Old(), make_loader(make_data(n=16)))
    msg = str(e.value)
    assert "\n" not in msg and "Old.configure_sharded_model" in msg and "configure_model" in msg

    class OldCb(Callback):
        def on_epoch_end(self, trainer, module):
            pass

    t = Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, callbacks=[OldCb()])
    with pytest.raises(TypeError, match=r"^OldCb\.on_epoch_end: not supported .*"
                                        r"on_train_epoch_end\)$"):
        t.fit(TinyModule(), make_loader(make_data(n=16)))


def test_batch_transfer_hooks_change_the_batch():
    class Doubling(TinyModule):
        seen = []

        def on_before_batch_transfer(self, batch, dataloader_idx):
            x, y = batch
            return x * 0 + 1, y

        def on_after_batch_transfer(self, batch, dataloader_idx):
            self.seen.append(float(batch[0].sum()))
            return batch

    m = Doubling()
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(m, make_loader(make_data(n=16)))
    assert m.seen == [64.0, 64.0]  # 8 rows of 8 ones


def test_model_eval_hooks_replace_the_mode_switch():
    class KeepsTrain(TinyModule):
        modes = []

        def on_validation_model_eval(self):
            pass  # validate in training mode (e.g. Monte-Carlo dropout)

        def validation_step(self, batch, batch_idx):
            self.modes.append(self.training)
            return super().validation_step(batch, batch_idx)

    m = KeepsTrain()
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            num_sanity_val_steps=0).validate(m, make_loader(make_data(n=16), shuffle=False))
    assert m.modes == [True, True]


def test_prepare_data_and_configure_model_run_before_setup_and_optimizers():
    order = []

    class Lazy(TinyModule):
        def prepare_data(self):
            order.append("prepare_data")

        def setup(self, stage):
            order.append("setup")

        def configure_model(self):
            order.append("configure_model")
            if not hasattr(self, "head"):
                self.head = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.head(self.net(x))

        def configure_optimizers(self):
            order.append("configure_optimizers")
            return torch.optim.SGD(self.parameters(), lr=0.1)

    m = Lazy()
    t = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(m, make_loader(make_data(n=16)))
    assert order == ["prepare_data", "setup", "configure_model", "configure_optimizers"]
    assert any(p is m.head.weight for g in t.optimizers[0].param_groups for p in g["params"])


def test_on_train_batch_end_gets_lightnings_outputs_dict():
    seen = []

    class M(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.last = loss.detach()
            return loss if batch_idx == 0 else ({"loss": loss, "n": 1} if batch_idx == 1
                                                else None)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append((outputs, self.last))

    Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(M(), make_loader(make_data(n=24)))
    (o0, l0), (o1, l1), (o2, _) = seen
    assert set(o0) == {"loss"} and torch.equal(o0["loss"], l0 / 2)  # normalized, as Lightning
    assert not o0["loss"].requires_grad
    assert set(o1) == {"loss", "n"} and torch.equal(o1["loss"], l1 / 2)
    assert o2 == {}
