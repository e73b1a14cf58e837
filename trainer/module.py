"""TrainModule: what a user writes (steps, hooks, optimizers), modelled on Lightning 1.0's API."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainer.optimization import TrainerOptimizer

__all__ = ["TrainModule", "AttributeDict", "ManualOptimizer"]

# the name this module used before trainer.optimization held the one optimizer wrapper
ManualOptimizer = TrainerOptimizer

_HPARAM_TYPES = (int, float, str, bool, type(None), Tensor)


class AttributeDict(dict):
    """A dict whose keys read as attributes: ``self.hparams.lr``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"hparams has no {key!r} (known: {sorted(self)})") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def _check_hparam(name: str, value: Any) -> None:
    if isinstance(value, _HPARAM_TYPES):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_hparam(f"{name}[{i}]", v)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str | int):
                break
            _check_hparam(f"{name}[{k!r}]", v)
        else:
            return
    raise TypeError(
        f"save_hyperparameters(): {name} is a {type(value).__name__}, which a checkpoint "
        "cannot hold as data (numbers, strings, bools, None, tensors, lists and dicts of them "
        f"only); pass ignore=[{name.split('[')[0]!r}] and give it to __init__ again when loading"
    )


class TrainModule(nn.Module):
    """Subclass and write ``training_step`` and ``configure_optimizers`` (the rest is optional).

    Hooks left as they are here cost nothing: the Trainer checks once, at setup, which ones a
    subclass overrides and calls only those.
    """

    automatic_optimization = True  # (no annotation: torch.jit reads class annotations)
    # torch.jit must not compile these (Lightning's protocol; trainer.export sets the flag)
    __jit_unused_properties__ = [
        "trainer", "device", "current_epoch", "global_step", "hparams", "example_input_array",
        "logger", "loggers",
    ]
    _jit_is_scripting = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer = None
        self._results = None  # the Results of the stage running now (set by the loop)
        self._hparams: AttributeDict = AttributeDict()
        self._example_input_array: Any = None

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_trainer"] = None
        state["_results"] = None
        return state

    @property
    def trainer(self) -> Any:
        if self._trainer is None and not self._jit_is_scripting:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        """The Trainer's first logger (None when not attached or without loggers)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """All of the Trainer's loggers ([] when not attached)."""
        return self._trainer.loggers if self._trainer is not None else []

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only (everywhere when not attached to a Trainer)."""
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    @property
    def hparams(self) -> AttributeDict:
        return self._hparams

    @property
    def example_input_array(self) -> Any:
        """An input sample for export and summaries (set it in __init__)."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    # ------------------------------------------------------------------ the user's part
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}.training_step(batch, batch_idx) must be written to fit"
        )

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}.validation_step must be written to validate"
        )

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.test_step must be written to test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, list | tuple):
            batch = batch[0]
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}.configure_optimizers must be written to fit"
        )

    # step_end / epoch_end data flow (opt-in: outputs are kept only if *_epoch_end is written)
    def training_step_end(self, step_output: Any) -> Any:
        return step_output

    def validation_step_end(self, step_output: Any) -> Any:
        return step_output

    def test_step_end(self, step_output: Any) -> Any:
        return step_output

    def training_epoch_end(self, outputs: list[Any]) -> None:
        """Receives the list of step outputs; written only if you need them."""

    def validation_epoch_end(self, outputs: list[Any]) -> None:
        """Receives the list of step outputs; written only if you need them."""

    def test_epoch_end(self, outputs: list[Any]) -> None:
        """Receives the list of step outputs; written only if you need them."""

    # hooks (Lightning names)
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_validation_model_zero_grad(self) -> None:
        """Called (when overridden) before validation inside fit; Lightning's default frees
        the gradients, ours keeps them so an accumulation window survives validation."""

    def on_before_optimizer_setup(self) -> None:
        """Called in fit after configure_model, before configure_optimizers."""

    # ---- model modes around evaluation: called instead of .eval() / the mode restore
    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    # ---- data hooks
    def prepare_data(self) -> None:
        """Download / write data once per node (local rank 0), before setup."""

    def configure_model(self) -> None:
        """Create layers lazily (after setup, before configure_optimizers); keep it idempotent:
        every stage calls it."""

    def configure_callbacks(self) -> Any:
        """Callbacks to add to the Trainer's; one of the same type replaces the Trainer's."""
        return []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int = 0) -> Any:
        """Move a batch (tensors in tuples, lists, dicts, dataclasses) to ``device``."""
        from trainer.loops import move_to_device

        return move_to_device(batch, device)

    # ---- the optimization step, as Lightning splits it (trainer.optimization calls these
    # only when overridden; the defaults below say what runs otherwise)
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The backward pass of automatic optimization and of manual_backward."""
        loss.backward(*args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int,
                            optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        """``optimizer.step(closure=optimizer_closure)``: the closure runs training_step,
        zero_grad and backward (so LBFGS works); override it for LR warm-up and the like."""
        optimizer.step(closure=optimizer_closure)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Called before each optimizer step with the Trainer's clipping flags."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ logging
    def log(self, name: str, value: Any, on_step: bool | None = None,
            on_epoch: bool | None = None, prog_bar: bool = False, logger: bool = True,
            reduce_fx: Any = "mean", sync_dist: bool = False,
            batch_size: int | None = None) -> None:
        """Record a scalar (number, tensor or Metric) for the loggers, callbacks and progress bar.

        Defaults follow the hook: training-batch hooks log on_step, validation/test and epoch
        hooks on_epoch. The epoch 'mean' is weighted by ``batch_size`` (found in the batch when
        not given). Logging both on_step and on_epoch gives ``name_step`` and ``name_epoch``.
        """
        results = self._results
        if results is None:
            raise RuntimeError(
                f"self.log({name!r}): logging is not supported here (outside fit/validate/test, "
                "or in predict_step / configure_optimizers / setup)"
            )
        results.log(name, value, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist,
                    batch_size)

    def log_dict(self, dictionary: Mapping[str, Any], on_step: bool | None = None,
                 on_epoch: bool | None = None, prog_bar: bool = False, logger: bool = True,
                 reduce_fx: Any = "mean", sync_dist: bool = False,
                 batch_size: int | None = None) -> None:
        """``self.log`` for each item."""
        for k, v in dictionary.items():
            self.log(k, v, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist, batch_size)

    # ------------------------------------------------------------------ optimization
    def optimizers(self) -> Any:
        """The optimizer(s) from configure_optimizers (one, or a list when several), wrapped so
        that ``step()`` runs the hooks, the loss scaler and (manual optimization) counts."""
        opts = self.trainer._optimization.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from configure_optimizers: None, one, or a list."""
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` with its hooks and the loss scaler (manual optimization)."""
        self.trainer._optimization.backward(loss, *args, **kwargs)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = "norm") -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm or value."""
        opt = getattr(optimizer, "optimizer", optimizer)
        self.trainer._optimization.clip_gradients(opt, gradient_clip_val, gradient_clip_algorithm)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Let only ``optimizer``'s parameters require grad (GAN-style alternation)."""
        opt = getattr(optimizer, "optimizer", optimizer)
        mine = {id(p) for g in opt.param_groups for p in g["params"]}
        self._toggled = {}
        for p in self.parameters():
            self._toggled[id(p)] = p.requires_grad
            if id(p) not in mine:
                p.requires_grad_(False)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        toggled = getattr(self, "_toggled", {})
        for p in self.parameters():
            if id(p) in toggled:
                p.requires_grad_(toggled[id(p)])
        self._toggled = {}

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        self.train()

    # ------------------------------------------------------------------ hyperparameters
    def save_hyperparameters(self, *names: str, ignore: list[str] | str | None = None) -> None:
        """Capture the caller's ``__init__`` arguments into ``self.hparams`` (and checkpoints)."""
        frame = inspect.currentframe().f_back
        init_args: dict[str, Any] = {}
        while frame is not None:
            if frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is self:
                code = frame.f_code
                arg_names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
                loc = frame.f_locals
                for a in arg_names[1:]:
                    if a in loc:
                        init_args[a] = loc[a]
                if code.co_flags & inspect.CO_VARKEYWORDS:
                    kw_name = code.co_varnames[code.co_argcount + code.co_kwonlyargcount
                                               + bool(code.co_flags & inspect.CO_VARARGS)]
                    init_args.update(loc.get(kw_name, {}))
                break
            frame = frame.f_back
        del frame
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        if names:
            unknown = [n for n in names if n not in init_args]
            if unknown:
                raise ValueError(f"save_hyperparameters({unknown}): not arguments of __init__ "
                                 f"(arguments: {sorted(init_args)})")
            init_args = {n: init_args[n] for n in names}
        for k in ignore:
            init_args.pop(k, None)
        for k, v in init_args.items():
            _check_hparam(k, v)
        self._hparams.update(init_args)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = "cpu",
                             strict: bool = True, **overrides: Any) -> TrainModule:
        """Rebuild the module from a checkpoint: ``cls(**hyper_parameters, **overrides)``.

        Called on TrainModule itself, the class named in the checkpoint is imported.
        """
        from trainer.checkpoint import CheckpointError, load_checkpoint

        ckpt = load_checkpoint(checkpoint_path, map_location=map_location)
        target = cls
        if cls is TrainModule:
            spec = ckpt.get("module_class", "")
            try:
                mod_name, _, qual = spec.partition(":")
                target = importlib.import_module(mod_name)
                for part in qual.split("."):
                    target = getattr(target, part)
            except (ImportError, AttributeError, ValueError) as e:
                raise CheckpointError(
                    f"checkpoint {str(checkpoint_path)!r}: cannot import its module class "
                    f"{spec!r} ({e}); call YourModule.load_from_checkpoint instead"
                ) from e
        kwargs = {**ckpt.get("hyper_parameters", {}), **overrides}
        try:
            module = target(**kwargs)
        except TypeError as e:
            raise TypeError(
                f"load_from_checkpoint({str(checkpoint_path)!r}): {target.__name__}(**{kwargs}) "
                f"failed: {e}. Call save_hyperparameters() in __init__, or pass the missing "
                "arguments as keyword overrides"
            ) from e
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"], strict=strict)
        return module

    # ------------------------------------------------------------------ summary
    def summarize(self, max_depth: int = 1) -> str:
        """A table of the submodules (name, type, parameters and, with example_input_array,
        output shape) and the parameter totals."""
        rows: list[list[str]] = []
        shapes: dict[str, str] = {}
        handles = []
        named = [(n, m) for n, m in self.named_modules()
                 if n and n.count(".") < max_depth]
        if self.example_input_array is not None:
            def hook_for(name: str) -> Any:
                def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                    if isinstance(out, Tensor):
                        shapes[name] = str(list(out.shape))
                return hook
            handles = [m.register_forward_hook(hook_for(n)) for n, m in named]
            was_training = self.training
            try:
                self.eval()
                with torch.no_grad():
                    x = self._example_like_weights()
                    self(*x) if isinstance(x, tuple) else self(x)
            finally:
                for h in handles:
                    h.remove()
                self.train(was_training)
        for n, m in named:
            count = sum(p.numel() for p in m.parameters())
            rows.append([n, type(m).__name__, f"{count:,}", shapes.get(n, "?")])
        header = ["name", "type", "params", "out shape"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines.append(f"{trainable:,} trainable params, {total - trainable:,} non-trainable, "
                     f"{total:,} total")
        return "\n".join(lines)

    def _example_like_weights(self) -> Any:
        """example_input_array on the module's device, floats in its weights' dtype (a module
        in '*-true' precision or after .double() takes inputs of its own dtype)."""
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)

        def like(t: Any) -> Any:
            if not isinstance(t, Tensor):
                return t
            t = t.to(self.device)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        x = self.example_input_array
        return tuple(like(t) for t in x) if isinstance(x, tuple) else like(x)

    # ------------------------------------------------------------------ export (EXPORT owns)
    def to_onnx(self, file_path: Any = None, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export to ONNX at ``file_path`` (Lightning's names); ``input_sample`` defaults to
        ``example_input_array``; ``kwargs`` (``dynamic_batch``, ``opset``, torch.onnx.export's
        own) go to :func:`trainer.export.to_onnx`."""
        from trainer.export import to_onnx

        _no_path_keyword("to_onnx", kwargs)
        if file_path is None:
            raise TypeError("to_onnx(file_path=...): say where the .onnx file goes")
        return to_onnx(self, file_path, input_sample, **kwargs)

    def to_torchscript(self, file_path: Any = None, method: str = "script",
                       example_inputs: Any = None, **kwargs: Any) -> Any:
        """Script or trace (``method``) the module; saved at ``file_path`` when given; ``kwargs``
        go to torch.jit.script / torch.jit.trace (see :func:`trainer.export.to_torchscript`)."""
        from trainer.export import to_torchscript

        _no_path_keyword("to_torchscript", kwargs)
        return to_torchscript(self, file_path, method, example_inputs, **kwargs)


def _no_path_keyword(fn: str, kwargs: dict[str, Any]) -> None:
    if "path" in kwargs:
        raise TypeError(f"{fn}(path=...): the file argument is named file_path (as in Lightning)")
