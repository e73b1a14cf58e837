"""configure_optimizers forms, schedulers, manual optimization, skipped and non-finite steps."""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, flat, make_data, make_loader
from torch import nn

from trainer import NonFiniteLossError, Trainer


def _t(**kw):
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   num_sanity_val_steps=0, **kw)


def _module(conf_fn):
    class M(TinyModule):
        def configure_optimizers(self):
            return conf_fn(self)
    return M()


DL = make_loader(make_data(n=32), batch_size=8)  # 4 batches per epoch


def _sgd(m, lr=1.0):
    return torch.optim.SGD(m.parameters(), lr=lr)


@pytest.mark.parametrize("form", ["opt", "list", "dict", "list_of_dicts", "two_lists"])
def test_configure_optimizers_forms(form):
    def conf(m):
        opt = _sgd(m)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"opt": opt, "list": [opt], "dict": {"optimizer": opt, "lr_scheduler": sched},
                "list_of_dicts": [{"optimizer": opt, "lr_scheduler": {"scheduler": sched}}],
                "two_lists": ([opt], [sched])}[form]

    m = _module(conf)
    t = _t(max_epochs=2)
    t.fit(m, DL)
    lr = t.optimizers[0].param_groups[0]["lr"]
    assert lr == (1.0 if form in ("opt", "list") else 0.25)  # epoch scheduler stepped twice
    assert m.lr_schedulers() is (t.lr_scheduler_configs[0].scheduler
                                 if t.lr_scheduler_configs else None)


def test_step_interval_and_frequency():
    def conf(m):
        opt = _sgd(m)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step",
                                                    "frequency": 2}}

    t = _t(max_epochs=1)
    t.fit(_module(conf), DL)
    assert t.optimizers[0].param_groups[0]["lr"] == 0.25  # 4 steps, every 2nd


def test_reduce_on_plateau_needs_monitor():
    def conf(m):
        opt = _sgd(m)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}

    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a metric"):
        _t(max_epochs=1).fit(_module(conf), DL)


def test_reduce_on_plateau_with_monitor_steps_on_the_metric():
    class M(TinyModule):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor(1.0))  # never improves

        def configure_optimizers(self):
            opt = _sgd(self)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched,
                                                        "monitor": "val_loss"}}

    t = _t(max_epochs=3)
    t.fit(M(), DL, DL)
    assert t.optimizers[0].param_groups[0]["lr"] == 0.25  # epoch 1 sets best, 2 and 3 reduce


def test_reduce_on_plateau_missing_metric_is_a_clear_error():
    def conf(m):
        opt = _sgd(m)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "nope"}}

    with pytest.raises(KeyError, match="'nope', which was not logged"):
        _t(max_epochs=1).fit(_module(conf), DL)


@pytest.mark.parametrize("conf,exc,match", [
    (lambda m: "adam", TypeError, "must return an optimizer"),
    (lambda m: {"optimizer": _sgd(m), "lr_scheduler": {"scheduler": None, "foo": 1}},
     ValueError, "unknown lr_scheduler key"),
    (lambda m: {"optimizer": _sgd(m), "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.StepLR(_sgd(m), 1), "interval": "batch"}},
     ValueError, "'epoch' or 'step'"),
    (lambda m: [_sgd(m), _sgd(m)], ValueError, "automatic_optimization = False"),
    (lambda m: None, ValueError, "no optimizer"),
    (lambda m: {"lr_scheduler": None}, ValueError, "needs 'optimizer'"),
])
def test_bad_configure_optimizers(conf, exc, match):
    with pytest.raises(exc, match=match):
        _t(max_epochs=1).fit(_module(conf), DL)


class GAN(TinyModule):
    """Two optimizers stepped by hand: a generator and a discriminator."""

    automatic_optimization = False

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gen = nn.Linear(4, 8)
        self.disc = nn.Linear(8, 1)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        z = torch.randn(real.shape[0], 4)
        fake = self.gen(z)
        # discriminator
        self.toggle_optimizer(opt_d)
        d_loss = (nn.functional.softplus(-self.disc(real)).mean()
                  + nn.functional.softplus(self.disc(fake.detach())).mean())
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        # generator
        self.toggle_optimizer(opt_g)
        g_loss = nn.functional.softplus(-self.disc(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        self.clip_gradients(opt_g, gradient_clip_val=0.5)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        sched_g.step()
        sched_d.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def configure_optimizers(self):
        og = torch.optim.Adam(self.gen.parameters(), lr=1e-2)
        od = torch.optim.Adam(self.disc.parameters(), lr=1e-2)
        return [og, od], [torch.optim.lr_scheduler.StepLR(og, 1, 0.9),
                          torch.optim.lr_scheduler.StepLR(od, 1, 0.9)]


def test_manual_optimization_gan_two_optimizers():
    m = GAN()
    g0, d0 = flat(m.gen).clone(), flat(m.disc).clone()
    net0 = flat(m.net).clone()
    t = _t(max_epochs=2)
    t.fit(m, DL)
    assert not torch.equal(flat(m.gen), g0) and not torch.equal(flat(m.disc), d0)
    assert torch.equal(flat(m.net), net0)  # not in any optimizer
    assert t.global_step == 16  # each optimizer.step() counts, as in Lightning
    og, od = t.optimizers
    assert og.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9 ** 8)  # stepped by hand only
    assert {"g_loss", "d_loss"} <= set(t.callback_metrics)
    assert all(p.requires_grad for p in m.parameters())  # untoggled


def test_training_step_returning_none_skips_the_step():
    class Skip(TinyModule):
        def training_step(self, batch, batch_idx):
            if batch_idx % 2 == 1:
                return None
            return super().training_step(batch, batch_idx)

    m = Skip()
    t = _t(max_epochs=1)
    t.fit(m, DL)
    assert t.global_step == 2


def test_dict_output_without_loss_is_an_error():
    class Bad(TinyModule):
        def training_step(self, batch, batch_idx):
            return {"los": super().training_step(batch, batch_idx)}

    with pytest.raises(ValueError, match="without a 'loss' key"):
        _t(max_epochs=1).fit(Bad(), DL)


class NaNAt(TinyModule):
    def __init__(self, bad_batch):
        super().__init__()
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.current_epoch == 1 and batch_idx == self.bad_batch:
            return loss * float("nan")
        return loss


def test_nonfinite_loss_raises_naming_epoch_and_step():
    t = _t(max_epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, batch 2 \(global step 6\)"):
        t.fit(NaNAt(2), DL)


def test_nonfinite_loss_skip():
    m = NaNAt(2)
    t = _t(max_epochs=2, on_nonfinite_loss="skip")
    t.fit(m, DL)
    assert t.global_step == 7
    assert torch.isfinite(flat(m)).all()


def test_gradient_clipping_by_value_bounds_the_gradients():
    grads = []

    class G(TinyModule):
        def on_before_optimizer_step(self, optimizer):
            grads.append(max(p.grad.abs().max().item() for p in self.parameters()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class After(G):
        pass

    _t(max_epochs=1, gradient_clip_val=1e-4, gradient_clip_algorithm="value").fit(G(), DL)
    assert grads and all(g > 1e-4 for g in grads)  # the hook sees gradients before clipping

    clipped = []

    class C(TinyModule):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.0)
            orig = opt.step

            def step(closure=None):  # the closure (forward, backward, clipping) runs first
                loss = closure()
                clipped.append(max(p.grad.abs().max().item() for p in self.parameters()))
                orig()
                return loss
            opt.step = step
            return opt

    _t(max_epochs=1, gradient_clip_val=1e-4, gradient_clip_algorithm="value").fit(C(), DL)
    assert clipped and all(g <= 1e-4 + 1e-12 for g in clipped)


# ------------------------------------------------------------------ overridden step hooks
def _fit(module, **kw):
    torch.manual_seed(0)
    t = _t(max_epochs=1, **kw)
    t.fit(module, make_loader(make_data(n=32), batch_size=8))
    return t


def test_backward_override_is_what_runs():
    class NoGrad(TinyModule):
        def backward(self, loss, *args, **kwargs):
            (loss * 0).backward(*args, **kwargs)

    m = NoGrad()
    before = flat(m).clone()
    _fit(m)
    assert torch.equal(flat(m), before)  # zero gradients: SGD moved nothing


def test_optimizer_zero_grad_override_is_what_runs():
    class KeepGrads(TinyModule):
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            pass  # gradients add up over the batches

    a, b = KeepGrads(), TinyModule()
    _fit(a)
    _fit(b)
    assert not torch.equal(flat(a), flat(b))
    assert all(p.grad is not None for p in a.parameters())


def test_lr_scheduler_step_override_is_what_runs():
    seen = []

    class Sched(TinyModule):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "interval": "step"}}

        def lr_scheduler_step(self, scheduler, metric):
            seen.append(metric)  # never steps it

    t = _fit(Sched())
    assert seen == [None] * 4 and t.optimizers[0].param_groups[0]["lr"] == 0.1


def test_configure_gradient_clipping_override_is_what_runs():
    got = []

    class Clip(TinyModule):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                        gradient_clip_algorithm=None):
            got.append((gradient_clip_val, gradient_clip_algorithm))
            self.clip_gradients(optimizer, 1e-4, "value")

        def on_train_batch_end(self, outputs, batch, batch_idx):
            assert max(p.grad.abs().max().item() for p in self.parameters()) <= 1e-4 + 1e-12

    _fit(Clip())
    assert got == [(None, "norm")] * 4  # the Trainer's flags, unset


def test_optimizer_step_that_skips_the_closure_is_an_error():
    class Skips(TinyModule):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            pass

    with pytest.raises(RuntimeError, match=r"Skips.optimizer_step did not run optimizer_closure"):
        _fit(Skips())


def test_optimizer_step_may_skip_the_step_but_run_the_closure():
    class EveryOther(TinyModule):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            if batch_idx % 2:
                optimizer.step(closure=optimizer_closure)
            else:
                optimizer_closure()  # training_step and backward, no step

    class Plain(TinyModule):
        pass

    a, b = EveryOther(), Plain()
    _fit(a)
    _fit(b)
    assert not torch.equal(flat(a), flat(b))


@pytest.mark.parametrize("automatic", [True, False])
def test_optimizers_are_instances_of_the_users_optimizer_class(automatic):
    seen = []

    class M(TinyModule):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            seen.append((isinstance(opt, torch.optim.Adam), opt.param_groups[0]["lr"],
                         opt.param_groups is self.trainer.optimizers[0].param_groups))
            loss = super().training_step(batch, batch_idx)
            if not self.automatic_optimization:
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    m = M()
    m.automatic_optimization = automatic
    t = _t(max_epochs=1)
    t.fit(m, DL)
    assert seen == [(True, 0.01, True)] * 4 and t.global_step == 4
    wrapped = m.optimizers()
    state = wrapped.state_dict()
    assert state["state"]  # Adam's moments, read through the wrapper
    wrapped.load_state_dict(state)
    assert wrapped.state is t.optimizers[0].state


def test_an_optimizer_of_the_users_own_gets_the_closure():
    """torch's optimizers may run the closure before a plain step() (the same thing, faster);
    one of the user's own, here a SAM-like one evaluating it twice, always gets it."""

    class TwoEvals(torch.optim.SGD):
        calls = 0

        def step(self, closure=None):
            closure()
            loss = closure()
            TwoEvals.calls += 1
            super().step()
            return loss

    class M(TinyModule):
        steps = 0

        def training_step(self, batch, batch_idx):
            M.steps += 1
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return TwoEvals(self.parameters(), lr=0.1)

    t = _fit(M())
    assert TwoEvals.calls == 4 and M.steps == 8 and t.global_step == 4


def test_fit_inside_no_grad_trains_as_outside():
    """fit called under torch.no_grad() still computes gradients (the optimization enables
    them for training_step, as Lightning's closure does) and gives the same weights."""
    ref, inside = TinyModule(), TinyModule()
    inside.load_state_dict(ref.state_dict())
    torch.manual_seed(1)  # (dropout draws from the global generator)
    _t(max_epochs=2).fit(ref, make_loader(make_data(n=32), batch_size=8))
    torch.manual_seed(1)
    with torch.no_grad():
        _t(max_epochs=2).fit(inside, make_loader(make_data(n=32), batch_size=8))
    assert torch.equal(flat(ref), flat(inside))
    assert not torch.equal(flat(ref), flat(TinyModule()))
