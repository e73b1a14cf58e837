"""The `Callback` base: every hook the Trainer calls, as a no-op.

Hook names and signatures follow Lightning 2.x: ``(self, trainer, module, ...)``. The Trainer
checks once (at setup) which hooks a callback overrides and calls only those, so a callback that
overrides nothing costs nothing in the hot loop (see :func:`overridden_hooks`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback", "HOOK_NAMES", "overridden_hooks"]


class Callback:
    """Base class of all callbacks. Override the hooks you need; the rest are no-ops."""

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint's ``callbacks`` dict.

        Class name plus the arguments that tell two instances of the same class apart;
        subclasses with such arguments override :meth:`_state_key_args`.
        """
        return self._generate_state_key(**self._state_key_args())

    def _state_key_args(self) -> dict[str, Any]:
        return {}

    def _generate_state_key(self, **kwargs: Any) -> str:
        """``ClassName{'k': v, ...}`` (Lightning's format), or the class name alone."""
        if not kwargs:
            return type(self).__name__
        return f"{type(self).__name__}{repr(kwargs)}"

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """State saved into checkpoints under :attr:`state_key`."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        """Called when a checkpoint dict is being built; may add entries to it."""

    def on_load_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        """Called when a checkpoint is being restored."""

    # ---------------------------------------------------------------- lifecycle
    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        """Called at the start of fit / validate / test / predict."""

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        """Called at the end of fit / validate / test / predict."""

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        """Called when fit begins."""

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        """Called when fit ends."""

    def on_sanity_check_start(self, trainer: Any, module: Any) -> None:
        """Called before the sanity validation steps."""

    def on_sanity_check_end(self, trainer: Any, module: Any) -> None:
        """Called after the sanity validation steps."""

    def on_before_optimizer_setup(self, trainer: Any, module: Any) -> None:
        """Called in fit after configure_model, before configure_optimizers (freeze here)."""

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        """Called when fit/validate/test/predict raises (KeyboardInterrupt included)."""

    # ---------------------------------------------------------------- train
    def on_train_start(self, trainer: Any, module: Any) -> None:
        """Called when the train loop begins."""

    def on_train_end(self, trainer: Any, module: Any) -> None:
        """Called when the train loop ends."""

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        """Called at the start of each training epoch."""

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        """Called at the end of each training epoch."""

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        """Called before each training batch."""

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after each training batch (after the optimizer step, if any)."""

    def on_before_backward(self, trainer: Any, module: Any, loss: Any) -> None:
        """Called before ``loss.backward()``."""

    def on_after_backward(self, trainer: Any, module: Any) -> None:
        """Called after ``loss.backward()``, before the optimizer step."""

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        """Called before ``optimizer.step()``."""

    def on_before_zero_grad(self, trainer: Any, module: Any, optimizer: Any) -> None:
        """Called before ``optimizer.zero_grad()``."""

    # ---------------------------------------------------------------- validation
    def on_validation_start(self, trainer: Any, module: Any) -> None:
        """Called when a validation run begins (sanity check included)."""

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        """Called when a validation run ends (sanity check included)."""

    def on_validation_epoch_start(self, trainer: Any, module: Any) -> None:
        """Called at the start of a validation epoch."""

    def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
        """Called at the end of a validation epoch."""

    def on_validation_batch_start(
        self, trainer: Any, module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called before each validation batch."""

    def on_validation_batch_end(
        self,
        trainer: Any,
        module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after each validation batch."""

    # ---------------------------------------------------------------- test
    def on_test_start(self, trainer: Any, module: Any) -> None:
        """Called when testing begins."""

    def on_test_end(self, trainer: Any, module: Any) -> None:
        """Called when testing ends."""

    def on_test_epoch_start(self, trainer: Any, module: Any) -> None:
        """Called at the start of the test epoch."""

    def on_test_epoch_end(self, trainer: Any, module: Any) -> None:
        """Called at the end of the test epoch."""

    def on_test_batch_start(
        self, trainer: Any, module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called before each test batch."""

    def on_test_batch_end(
        self,
        trainer: Any,
        module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after each test batch."""

    # ---------------------------------------------------------------- predict
    def on_predict_start(self, trainer: Any, module: Any) -> None:
        """Called when prediction begins."""

    def on_predict_end(self, trainer: Any, module: Any) -> None:
        """Called when prediction ends."""

    def on_predict_epoch_start(self, trainer: Any, module: Any) -> None:
        """Called at the start of the predict epoch."""

    def on_predict_epoch_end(self, trainer: Any, module: Any) -> None:
        """Called at the end of the predict epoch."""

    def on_predict_batch_start(
        self, trainer: Any, module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called before each predict batch."""

    def on_predict_batch_end(
        self,
        trainer: Any,
        module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after each predict batch."""


#: Every hook name of :class:`Callback` the Trainer may call (state methods excluded).
HOOK_NAMES: tuple[str, ...] = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value)
    and not name.startswith("_")
    and name not in ("state_dict", "load_state_dict")
)


def overridden_hooks(callback: Callback, hooks: tuple[str, ...] = HOOK_NAMES) -> list[str]:
    """Names of the hooks ``callback`` overrides (its class's function differs from the base's).

    The Trainer calls this once per callback at setup and calls only these hooks afterwards.
    """
    out = []
    for name in hooks:
        impl = getattr(type(callback), name, None)
        if impl is not None and impl is not getattr(Callback, name):
            out.append(name)
    return out
