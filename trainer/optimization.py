"""The one optimizer step: zero_grad, backward, unscale, clip, step, schedulers, user overrides.

Automatic optimization runs, for each batch, what Lightning runs::

    optimizer_step(epoch, batch_idx, optimizer, closure)     # the module's hook (or its default)
      optimizer.step(closure)                                 # TrainerOptimizer.step
        closure(): training_step, zero_grad (first batch of a window), backward
        then: unscale (16-mixed), on_before_optimizer_step, configure_gradient_clipping

A batch inside an accumulation window runs the closure alone, without a step. Manual
optimization reaches the same code through ``self.optimizers()`` (``TrainerOptimizer``) and
``self.manual_backward``. Which hooks a user overrode is looked up once per fit, here: a hook
left as it is costs nothing per batch.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Optimization", "TrainerOptimizer", "loss_of"]


def loss_of(out: Any) -> Tensor | None:
    """The loss in what training_step returned: a tensor, ``{'loss': ...}`` or None."""
    if out is None or type(out) is Tensor:
        return out
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError("training_step returned a dict without a 'loss' key "
                             f"(keys: {sorted(out)}); return {{'loss': loss, ...}}")
        return out["loss"]
    if isinstance(out, Tensor):
        return out
    raise TypeError("training_step must return a loss tensor, a dict with 'loss', or None "
                    f"(got {type(out).__name__})")


def _do_nothing() -> None:
    return None


def _calls_closure_once_first(optimizer: torch.optim.Optimizer) -> bool:
    """torch's own optimizers (LBFGS aside) call the closure once, first, then update: running
    it before a closure-less ``step()`` is the same, and skips the few microseconds per step
    that step(closure)'s plumbing costs. Any other optimizer, or a replaced ``step``, gets the
    closure."""
    cls = type(optimizer)
    if not cls.__module__.startswith("torch.optim.") or cls is torch.optim.LBFGS:
        return False
    own = vars(optimizer).get("step")  # an LR scheduler wraps it to count calls: still torch's
    return own is None or getattr(own, "_wrapped_by_lr_sched", False)


_NOT_RUN = object()  # the batch slot while a user's optimizer_step has not run the closure


class TrainerOptimizer:
    """An optimizer as the module sees it (``self.optimizers()``, the ``optimizer_step`` hook).

    ``step(closure)`` runs the closure, the hooks before a step and the step itself through the
    loss scaler, as Lightning's LightningOptimizer does; everything else is the wrapped torch
    optimizer's. In manual optimization each ``step()`` counts one global step. Like Lightning's,
    it is an instance of the optimizer's class too (``isinstance(opt, torch.optim.LBFGS)``),
    sharing its state and param_groups.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, optimization: Optimization) -> None:
        # the optimizer's attributes (the same state, param_groups, hooks objects), less the
        # instance-level step an LR scheduler may have wrapped it in
        self.__dict__ = {k: v for k, v in vars(optimizer).items() if k not in ("step", "__del__")}
        self.optimizer = optimizer
        self._optimization = optimization
        self.__class__ = type(f"Trainer{type(optimizer).__name__}",
                              (TrainerOptimizer, type(optimizer)), {})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        o = self._optimization
        out = o.optimizer_step(self.optimizer, closure)
        if not o.automatic:
            o.trainer.global_step += 1
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)  # (it rebinds state: share it again)
        self.__dict__.update(state=self.optimizer.state,
                             param_groups=self.optimizer.param_groups)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "optimizer":  # pickling probes dunders first
            raise AttributeError(name)
        return getattr(self.optimizer, name)


class Optimization:
    """Everything between a batch and updated weights, for one fit.

    Built after configure_optimizers; ``training_batch`` is the automatic-optimization hot path.
    """

    def __init__(self, trainer: Any, module: Any, optimizers: list[torch.optim.Optimizer],
                 overrides: set[str],
                 hook_callers: Callable[[str], list[Callable[..., Any]]]) -> None:
        """``overrides``: the module methods the user wrote; ``hook_callers(name)``: the
        callbacks' and the module's implementations of hook ``name``, in calling order."""
        t = trainer
        self.trainer = t
        self.module = module
        self.automatic = bool(module.automatic_optimization)
        self.optimizers = [TrainerOptimizer(o, self) for o in optimizers]
        self.scaler: torch.amp.GradScaler = t.precision_plugin.scaler
        self._scaling = self.scaler.is_enabled()  # 16-mixed on CUDA (read once: per-step calls)
        self._unscaled: set[int] = set()  # optimizers unscaled since the scaler's last update
        self.accumulate = t.accumulate_grad_batches
        self.clip_val = t.gradient_clip_val
        self.clip_algorithm = t.gradient_clip_algorithm
        self._clip_params = {id(o): [p for g in o.param_groups for p in g["params"]]
                             for o in optimizers}
        self._closure_first = {id(o) for o in optimizers if _calls_closure_once_first(o)}

        # ---- the user's overrides, resolved once: None means "the default, inlined"
        def own(name: str) -> Any:
            return getattr(module, name) if name in overrides else None

        self._before_zero_grad = hook_callers("on_before_zero_grad")
        self._before_backward = hook_callers("on_before_backward")
        self._after_backward = hook_callers("on_after_backward")
        self._before_step = hook_callers("on_before_optimizer_step")
        self._zero_grad_hook = own("optimizer_zero_grad")
        self._backward_hook = own("backward")
        self._step_hook = own("optimizer_step")
        self._scheduler_hook = own("lr_scheduler_step")
        clip_hook = own("configure_gradient_clipping")
        if clip_hook is None and self.clip_val is not None:
            clip_hook = self._default_clip
        self._clip_hook = clip_hook if self.automatic else None  # Lightning: automatic only
        # the closure needs no wrapper when nothing runs between it and the step
        self._after_closure_needed = bool(
            self._before_step or self._clip_hook is not None or self._scaling)
        # nothing hooked anywhere in the step (the common case): each batch runs the same
        # calls in the same order as the closure path, without its plumbing, which is a
        # measurable share of a small model's step (bench/trainer_ladder.py)
        self._plain = optimizers[0] if (
            self.automatic and self.accumulate == 1 and len(optimizers) == 1
            and id(optimizers[0]) in self._closure_first and not self._after_closure_needed
            and not (self._before_zero_grad or self._before_backward or self._after_backward)
            and self._zero_grad_hook is None and self._backward_hook is None
            and self._step_hook is None) else None
        if self._plain is not None:
            self.training_batch = self._plain_training_batch  # type: ignore[method-assign]

        # ---- per-batch state read by the closure (set by training_batch)
        self.run_step: Callable[[Any, int], Any] = module.training_step  # the loop may wrap it
        self.check_loss: Callable[[Tensor, int], Tensor | None] | None = None
        self._batch: Any = None
        self._batch_idx = 0
        self._zero_grad_now = False
        self.backward_in_window = False
        self.output: Any = None

    # ------------------------------------------------------------------ automatic
    def training_batch(self, batch: Any, batch_idx: int, first: bool, last: bool) -> bool:
        """training_step, backward and, when ``last`` (the window is complete), the optimizer
        step. Returns whether a step was taken (some backward happened in the window).
        ``self.output`` holds what training_step returned."""
        self._batch = batch
        self._batch_idx = batch_idx
        self._zero_grad_now = first
        if first:
            self.backward_in_window = False
        if not last:
            self._closure()
            return False
        if self._step_hook is None:  # the default optimizer_step: optimizer.step(closure)
            self.optimizer_step(self.optimizers[0].optimizer, self._closure)
            return self.backward_in_window
        self._batch = _NOT_RUN
        self._step_hook(self.trainer.current_epoch, batch_idx, self.optimizers[0],
                        self._closure_of(batch))
        if self._batch is _NOT_RUN:
            raise RuntimeError(
                f"{type(self.module).__name__}.optimizer_step did not run optimizer_closure "
                "(training_step and backward run inside it): call "
                "optimizer.step(closure=optimizer_closure), or optimizer_closure() to skip "
                "the step")
        return self.backward_in_window

    def _plain_training_batch(self, batch: Any, batch_idx: int, first: bool, last: bool) -> bool:
        """``training_batch`` when nothing is hooked, one batch per window and a torch
        optimizer: training_step, the loss check, zero_grad, backward, step, as the closure
        path runs them (a step without a loss updates nothing, as there)."""
        if not torch.is_grad_enabled():  # an enclosing no_grad: the closure path enables it
            return Optimization.training_batch(self, batch, batch_idx, first, last)
        out = self.output = self.run_step(batch, batch_idx)
        loss = out if type(out) is Tensor else loss_of(out)
        if loss is not None and self.check_loss is not None:
            loss = self.check_loss(loss, batch_idx)
        opt = self._plain
        opt.zero_grad()
        self.backward_in_window = loss is not None
        if loss is not None:
            loss.backward()
        opt.step()
        return self.backward_in_window

    def _closure_of(self, batch: Any) -> Callable[[], Tensor | None]:
        def closure() -> Tensor | None:
            self._batch = batch
            return self._closure()
        return closure

    def finish_window(self, batch_idx: int) -> bool:
        """Step for a window the loader ended early (a loader without a length): the closure
        already ran for each of its batches, so the step gets one that only returns."""
        if not self.backward_in_window:
            return False
        self._batch_idx = batch_idx
        if self._step_hook is None:
            self.optimizer_step(self.optimizers[0].optimizer, _do_nothing)
        else:
            self._step_hook(self.trainer.current_epoch, batch_idx, self.optimizers[0],
                            _do_nothing)
        return True

    def _closure(self) -> Tensor | None:
        """Lightning's closure: training_step, zero_grad (first batch of a window), backward."""
        if not torch.is_grad_enabled():  # an optimizer may call it under no_grad
            with torch.enable_grad():
                return self._closure()
        out = self.output = self.run_step(self._batch, self._batch_idx)
        loss = out if type(out) is Tensor else loss_of(out)
        if loss is not None and self.check_loss is not None:
            loss = self.check_loss(loss, self._batch_idx)
        if self._zero_grad_now:
            opt = self.optimizers[0].optimizer
            for f in self._before_zero_grad:
                f(opt)
            if self._zero_grad_hook is None:
                opt.zero_grad()
            else:
                self._zero_grad_hook(self.trainer.current_epoch, self._batch_idx, opt)
        if loss is not None:
            self.backward(loss / self.accumulate if self.accumulate > 1 else loss)
            self.backward_in_window = True
        return loss

    # ------------------------------------------------------------------ shared pieces
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """on_before_backward, the (scaled) backward or the module's ``backward``, then
        on_after_backward; ``manual_backward`` calls this too."""
        for f in self._before_backward:
            f(loss)
        if self._scaling:
            loss = self.scaler.scale(loss)
        if self._backward_hook is None:
            loss.backward(*args, **kwargs)
        else:
            self._backward_hook(loss, *args, **kwargs)
        for f in self._after_backward:
            f()

    def optimizer_step(self, optimizer: torch.optim.Optimizer,
                       closure: Callable[[], Any] | None = None) -> Any:
        """``optimizer.step(closure)`` with, between the closure and the step: unscaling,
        on_before_optimizer_step and clipping (automatic optimization only)."""
        if closure is None:
            closure = _do_nothing
        if self._scaling:  # GradScaler takes no closure: run it first
            loss = closure()
            self._after_closure(optimizer)
            if self.automatic and not self.backward_in_window:
                return loss  # nothing to step: the scaler has no gradients to check
            self.scaler.step(optimizer)
            self.scaler.update()
            self._unscaled.clear()
            return loss
        if id(optimizer) in self._closure_first:
            loss = closure()
            if self._after_closure_needed:
                self._after_closure(optimizer)
            optimizer.step()
            return loss
        if self._after_closure_needed:
            closure = functools.partial(self._closure_then_hooks, optimizer, closure)
        return optimizer.step(closure=closure)

    def _closure_then_hooks(self, optimizer: torch.optim.Optimizer,
                            closure: Callable[[], Any]) -> Any:
        loss = closure()
        self._after_closure(optimizer)
        return loss

    def _after_closure(self, optimizer: torch.optim.Optimizer) -> None:
        self.unscale(optimizer)
        for f in self._before_step:
            f(optimizer)
        if self._clip_hook is not None:
            self._clip_hook(optimizer, self.clip_val, self.clip_algorithm)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring 16-mixed gradients back to their true scale (once per step)."""
        if self._scaling and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def _default_clip(self, optimizer: torch.optim.Optimizer, value: float | None,
                      algorithm: str | None) -> None:
        self.clip_gradients(optimizer, value, algorithm)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, value: float | None,
                       algorithm: str | None = "norm") -> None:
        """Clip ``optimizer``'s gradients by norm or value (nothing when ``value`` is falsy)."""
        if not value:
            return
        self.unscale(optimizer)
        params = self._clip_params.get(id(optimizer))
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        if algorithm in ("norm", None):
            torch.nn.utils.clip_grad_norm_(params, value)
        elif algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value' "
                             f"(got {algorithm!r})")

    # ------------------------------------------------------------------ schedulers
    def step_schedulers(self, interval: str, counter: int, plateau: bool | None = None) -> None:
        """Step the schedulers of ``interval`` whose frequency divides ``counter`` (only
        ReduceLROnPlateau ones, or only the others, when ``plateau`` says so), through the
        module's ``lr_scheduler_step``."""
        if not self.automatic:
            return
        for c in self.trainer.lr_scheduler_configs:  # (a callback may have set others)
            if c.interval != interval or counter % c.frequency or (
                    plateau is not None and c.reduce_on_plateau != plateau):
                continue
            metric = None
            if c.reduce_on_plateau:
                metrics = self.trainer.callback_metrics
                if c.monitor not in metrics:
                    if c.strict:
                        raise KeyError(
                            f"ReduceLROnPlateau monitors {c.monitor!r}, which was not logged "
                            f"(logged: {sorted(metrics)}); self.log({c.monitor!r}, ...) or "
                            "set 'strict': False in the lr_scheduler dict")
                    warnings.warn(f"ReduceLROnPlateau monitors {c.monitor!r}, which is not "
                                  "logged yet ('strict': False): this scheduler step is "
                                  "skipped", RuntimeWarning, stacklevel=2)
                    continue
                metric = float(metrics[c.monitor])
            if self._scheduler_hook is not None:
                self._scheduler_hook(c.scheduler, metric)
            elif metric is None:
                c.scheduler.step()
            else:
                c.scheduler.step(metric)


def nonfinite_checker(trainer: Any, device: torch.device) -> Any:
    """The per-step loss check for ``Trainer(on_nonfinite_loss=...)``, or None.

    'raise' checks each step on CPU (no sync there) and, on an accelerator, adds the loss to a
    device accumulator read at log points and epoch end; 'skip' checks each step (a sync on an
    accelerator) and drops that batch's backward."""
    mode = trainer.on_nonfinite_loss
    if mode == "ignore":
        return None
    if mode == "skip" or device.type == "cpu":
        def check_now(loss: Tensor, batch_idx: int) -> Tensor | None:
            if math.isfinite(loss.item()):
                return loss
            return trainer._nonfinite(loss, trainer.current_epoch, batch_idx)
        return check_now

    def check_later(loss: Tensor, batch_idx: int) -> Tensor:
        trainer._watch_nonfinite(loss, batch_idx)
        return loss
    return check_later
