"""Trainer: flags checked at construction; fit / validate / test / predict.

The Trainer owns the bookkeeping (flags, hooks, optimizers, logged values, checkpoints); the
loops in trainer.loops do the iterating; the strategy (trainer.strategy) says where the work
runs, on which kind of device (trainer.accelerator); the precision plugin (trainer.precision) how
the numbers are computed.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from trainer.accelerator import Accelerator
from trainer.callbacks import (
    HOOK_NAMES,
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    Timer,
    overridden_hooks,
)
from trainer.callbacks.timer import parse_duration
from trainer.checkpoint import (
    collect_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from trainer.ckpt_lookup import find_checkpoint
from trainer.compiled import compiled_methods, unwrap_compiled
from trainer.eval_table import print_results
from trainer.loggers.csv import CSVLogger
from trainer.loops import (
    EvalContext,
    FitContext,
    FitLoop,
    NonFiniteLossError,
    limit_batches,
    move_to_device,
    run_evaluation,
    sized_len,
)
from trainer.module import TrainModule
from trainer.optimization import Optimization, nonfinite_checker
from trainer.precision import Precision, normalize_precision
from trainer.profilers import Profiler, make_profiler, profiled
from trainer.results import Results, logging_as
from trainer.seed import add_worker_init_fn, reset_seed
from trainer.strategy import Strategy, select_strategy

__all__ = ["Trainer", "LRSchedulerConfig", "NonFiniteLossError"]

_STAGES = ("fit", "validate", "test", "predict")


@dataclass
class LRSchedulerConfig:
    """One scheduler from configure_optimizers and when to step it."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    name: str | None = None
    strict: bool = True
    opt_idx: int = 0

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _default_transfer(batch: Any, device: torch.device, dataloader_idx: int) -> Any:
    return move_to_device(batch, device)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("trainflow")
    except Exception:
        return "0+unknown"


def _check_int(name: str, value: Any, low: int, allow: tuple = ()) -> None:
    if any(type(value) is type(a) and value == a for a in allow) or (
            isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return
    extra = f" or one of {list(allow)}" if allow else ""
    raise ValueError(f"Trainer({name}=...): must be an int >= {low}{extra} (got {value!r})")


def _check_limit(name: str, value: Any) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, float) and 0.0 <= value <= 1.0)
    if not ok:
        raise ValueError(f"Trainer({name}=...): must be an int >= 0 (batches) or a float in "
                         f"[0.0, 1.0] (fraction of the loader) (got {value!r})")


class Trainer:
    """Runs a TrainModule: ``Trainer(max_epochs=3).fit(module, train_loader, val_loader)``.

    Flags (Lightning's names and meanings): see the keyword arguments of ``__init__``. An unknown
    flag or a bad value raises at construction, naming the flag and what it accepts.
    ``on_nonfinite_loss``: 'raise' (default: stop with an error naming epoch and step), 'skip'
    (drop that batch's backward/step) or 'ignore'.
    """

    def __init__(
        self,
        *,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: int | str = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        logger: Any = True,
        callbacks: Any = None,
        fast_dev_run: bool | int = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float = 1.0,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int = 2,
        log_every_n_steps: int = 50,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        deterministic: bool = False,
        default_root_dir: str | os.PathLike | None = None,
        on_nonfinite_loss: str = "raise",
        enable_model_summary: bool = True,
        max_time: str | dict[str, int] | timedelta | None = None,
        detect_anomaly: bool = False,
        benchmark: bool | None = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        profiler: str | Profiler | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            import inspect

            known = [n for n, p in inspect.signature(Trainer.__init__).parameters.items()
                     if p.kind is p.KEYWORD_ONLY]
            msgs = []
            for k in unknown:
                close = difflib.get_close_matches(k, known, n=1)
                msgs.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(f"Trainer(): unknown flag(s) {', '.join(msgs)}")
        # ---- validate every flag
        if not isinstance(accelerator, Accelerator) and accelerator not in (
                "auto", "cpu", "cuda", "gpu"):
            raise ValueError(f"Trainer(accelerator=...): must be 'auto', 'cpu' or 'cuda' "
                             f"(got {accelerator!r})")
        self.precision = normalize_precision(precision)
        if fast_dev_run is not False:
            _check_int("fast_dev_run", fast_dev_run, 1, allow=(True,))
        if max_epochs is not None:
            _check_int("max_epochs", max_epochs, -1)
        if min_epochs is not None:
            _check_int("min_epochs", min_epochs, 0)
        _check_int("max_steps", max_steps, -1)
        for name, v in (("limit_train_batches", limit_train_batches),
                        ("limit_val_batches", limit_val_batches),
                        ("limit_test_batches", limit_test_batches),
                        ("limit_predict_batches", limit_predict_batches),
                        ("overfit_batches", overfit_batches)):
            _check_limit(name, v)
        if isinstance(val_check_interval, float):
            if not 0.0 < val_check_interval <= 1.0:
                raise ValueError("Trainer(val_check_interval=...): a float must be in (0.0, 1.0] "
                                 f"(fraction of an epoch) (got {val_check_interval!r})")
        else:
            _check_int("val_check_interval", val_check_interval, 1)
        if check_val_every_n_epoch is None:
            # Lightning's step-based validation: every val_check_interval training batches,
            # counted across epochs (for loaders without a length, or epochs of any size)
            if isinstance(val_check_interval, float):
                raise ValueError(
                    "Trainer(check_val_every_n_epoch=None): val_check_interval must be an int "
                    "number of training batches, counted across epochs (got "
                    f"{val_check_interval!r})")
        else:
            _check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1)
        _check_int("num_sanity_val_steps", num_sanity_val_steps, -1)
        _check_int("log_every_n_steps", log_every_n_steps, 1)
        _check_int("accumulate_grad_batches", accumulate_grad_batches, 1)
        if gradient_clip_val is not None and (
                isinstance(gradient_clip_val, bool)
                or not isinstance(gradient_clip_val, int | float) or gradient_clip_val < 0):
            raise ValueError("Trainer(gradient_clip_val=...): must be a number >= 0 or None "
                             f"(got {gradient_clip_val!r})")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError("Trainer(gradient_clip_algorithm=...): must be 'norm' or 'value' "
                             f"(got {gradient_clip_algorithm!r})")
        if on_nonfinite_loss not in ("raise", "skip", "ignore"):
            raise ValueError("Trainer(on_nonfinite_loss=...): must be 'raise', 'skip' or "
                             f"'ignore' (got {on_nonfinite_loss!r})")
        for name, v in (("enable_checkpointing", enable_checkpointing),
                        ("enable_progress_bar", enable_progress_bar),
                        ("deterministic", deterministic),
                        ("enable_model_summary", enable_model_summary),
                        ("detect_anomaly", detect_anomaly),
                        ("sync_batchnorm", sync_batchnorm)):
            if not isinstance(v, bool):
                raise ValueError(f"Trainer({name}=...): must be True or False (got {v!r})")
        _check_int("num_nodes", num_nodes, 1)
        if max_time is not None:
            max_time = parse_duration(max_time)
        if benchmark is not None and not isinstance(benchmark, bool):
            raise ValueError(f"Trainer(benchmark=...): must be True, False or None (got "
                             f"{benchmark!r})")
        _check_int("reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0)

        # ---- store
        self.devices = devices
        self.num_nodes = num_nodes
        self.fast_dev_run = fast_dev_run
        self.max_steps = max_steps
        if max_epochs is None:  # as Lightning: 1000 unless max_steps or max_time bounds the fit
            max_epochs = 1000 if max_steps == -1 and max_time is None else -1
        self.max_epochs = math.inf if max_epochs == -1 else max_epochs
        self.min_epochs = min_epochs or 0
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.limit_predict_batches = limit_predict_batches
        self.overfit_batches = overfit_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = num_sanity_val_steps
        self.log_every_n_steps = log_every_n_steps
        self.enable_checkpointing = enable_checkpointing
        self.enable_progress_bar = enable_progress_bar
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = None if not gradient_clip_val else float(gradient_clip_val)
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.deterministic = deterministic
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir else os.getcwd()
        self.on_nonfinite_loss = on_nonfinite_loss
        self.enable_model_summary = enable_model_summary
        self.max_time = max_time
        self.detect_anomaly = detect_anomaly
        # cudnn.benchmark during a stage: the flag, else off when deterministic, else as it was
        self.benchmark = benchmark if benchmark is not None else (
            False if deterministic else None)
        self.sync_batchnorm = sync_batchnorm
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.profiler = make_profiler(profiler)
        if fast_dev_run:
            n = 1 if fast_dev_run is True else int(fast_dev_run)
            self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            self.max_steps, self.max_epochs, self.num_sanity_val_steps = n, 1, 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            logger, enable_checkpointing = False, False
        if overfit_batches:
            self.limit_train_batches = self.limit_val_batches = overfit_batches

        self.strategy = select_strategy(strategy, accelerator, devices, num_nodes)
        self.accelerator: Accelerator = self.strategy.accelerator
        self.precision_plugin = Precision(self.precision, self.accelerator)
        self.callbacks = self._build_callbacks(callbacks, enable_checkpointing,
                                               enable_progress_bar)
        if max_time is not None:
            if any(isinstance(c, Timer) for c in self.callbacks):
                raise ValueError("Trainer(max_time=...): callbacks already hold a Timer; set "
                                 "its duration there or drop max_time")
            self.callbacks = sorted([*self.callbacks, Timer(max_time)],
                                    key=lambda c: isinstance(c, ModelCheckpoint))
        if sync_batchnorm and self.strategy.world_size > 1 and (
                not self.accelerator.supports_sync_batchnorm):
            raise ValueError("Trainer(sync_batchnorm=True): torch's SyncBatchNorm synchronizes "
                             "on CUDA devices only; use accelerator='cuda' or drop the flag")
        self.loggers = self._build_loggers(logger)

        # ---- state
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.sanity_checking = False
        self.state_stage: str | None = None
        self.lightning_module: TrainModule | None = None
        self.datamodule: Any = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._optimization: Optimization | None = None
        self.fit_loop = FitLoop(self)
        self.num_training_batches: float = 0
        self.num_val_batches: list[float] = []
        self.num_sanity_val_batches: list[float] = []
        self.num_test_batches: list[float] = []
        self.num_predict_batches: list[float] = []
        self._train_results = Results("train", self.strategy)
        self._epoch_metrics: dict[str, Tensor] = {}
        self._prog_bar_keys: set[str] = set()
        self._logged: dict[str, Any] = {}  # floats, or step tensors (floats when read)
        self._eval_log_steps: dict[str, int] = {}  # evaluation batches logged, per stage
        self._live_results: Results | None = None
        self._dynamo_ctx: Any = None  # torch.compile's settings, from fit() to its dispatch
        self._reset_transient()

    # ------------------------------------------------------------------ construction helpers
    def _reset_transient(self) -> None:
        self._hooks: dict[str, list[Any]] = {}
        self._cb_with: dict[str, list[Any]] = {}
        self._module_overrides: set[str] = set()
        self._transfer_fn: Any = None
        self._restart_rng: dict[str, Any] | None = None
        self._nf_acc: Tensor | None = None
        self._nf_from = 0
        self._val_enabled = False
        self._val_dls: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("_hooks", "_cb_with", "_val_dls"):
            state[k] = {} if k != "_val_dls" else []
        state["_transfer_fn"] = None
        state["_optimization"] = None
        state["_live_results"] = None
        state["_logged"] = self.logged_metrics  # floats, not step tensors
        return state

    @staticmethod
    def _build_callbacks(callbacks: Any, checkpointing: bool, progress: bool) -> list[Any]:
        if callbacks is None:
            cbs: list[Any] = []
        elif isinstance(callbacks, list | tuple):
            cbs = list(callbacks)
        else:
            cbs = [callbacks]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"Trainer(callbacks=...): {cb!r} is not a trainer.callbacks."
                                "Callback")
        if progress and not any(isinstance(c, ProgressBar) for c in cbs):
            cbs.append(ProgressBar())
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in cbs):
            cbs.append(ModelCheckpoint())
        # Lightning's order: checkpoint callbacks run last so they see what others logged
        return sorted(cbs, key=lambda c: isinstance(c, ModelCheckpoint))

    def _build_loggers(self, logger: Any) -> list[Any]:
        if logger is None or logger is False:
            return []
        if logger is True:
            return [CSVLogger(save_dir=self.default_root_dir)]
        loggers = list(logger) if isinstance(logger, list | tuple) else [logger]
        for lg in loggers:
            if not (hasattr(lg, "log_metrics") and hasattr(lg, "log_hyperparams")):
                raise TypeError(f"Trainer(logger=...): {lg!r} is not a trainer.loggers.Logger "
                                "(True, False, a Logger or a list of them)")
        return loggers

    # ------------------------------------------------------------------ what callbacks read
    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def model(self) -> TrainModule | None:
        """The module being run (Lightning's name: lightning_module)."""
        return self.lightning_module

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps this fit will take (for OneCycleLR's ``total_steps`` in
        configure_optimizers): this rank's training batches per epoch (limit_train_batches and
        the DDP share applied) over accumulate_grad_batches, times max_epochs, capped by
        max_steps; inf for endless training. Outside fit, before any fit in this process, it
        loads the attached module's (or datamodule's) train_dataloader(), as Lightning does."""
        if self.max_epochs == math.inf:
            return math.inf if self.max_steps == -1 else self.max_steps
        per_epoch = self.num_training_batches
        if self.state_stage != "fit" and not per_epoch:
            per_epoch = self._training_batches_outside_fit()
        if per_epoch == math.inf:  # a loader without a length: only max_steps bounds it
            return math.inf if self.max_steps == -1 else self.max_steps
        steps = math.ceil(per_epoch / self.accumulate_grad_batches) * max(self.max_epochs, 1)
        return steps if self.max_steps == -1 else min(steps, self.max_steps)

    def _training_batches_outside_fit(self) -> float:
        if self.lightning_module is None:
            raise RuntimeError("Trainer.estimated_stepping_batches: no module attached yet; read "
                               "it in configure_optimizers, or after fit/validate/test/predict")
        dls = self._loaders("fit", None, self.datamodule)
        if not dls:
            raise RuntimeError("Trainer.estimated_stepping_batches: no training data: the "
                               "module (or datamodule) has no train_dataloader()")
        return limit_batches(sized_len(dls[0]), self.limit_train_batches)

    @property
    def training(self) -> bool:
        return self.state_stage == "fit" and not self.sanity_checking and (
            self._live_results is None or self._live_results is self._train_results)

    @property
    def validating(self) -> bool:
        return self.state_stage == "validate" or (
            self.state_stage == "fit" and self._live_results is not None
            and self._live_results is not self._train_results)

    @property
    def testing(self) -> bool:
        return self.state_stage == "test"

    @property
    def predicting(self) -> bool:
        return self.state_stage == "predict"

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callback(self) -> Any:
        for c in self.callbacks:
            if isinstance(c, EarlyStopping):
                return c
        return None

    @property
    def progress_bar_callback(self) -> Any:
        for c in self.callbacks:
            if isinstance(c, ProgressBar):
                return c
        return None

    @contextlib.contextmanager
    def _results_live(self, results: Results | None) -> Iterator[None]:
        """Within: ``results`` is what callback_metrics and training/validating read; what was
        live before comes back after (a validation inside a training epoch hands back to it)."""
        prev, self._live_results = self._live_results, results
        try:
            yield
        finally:
            self._live_results = prev

    def _live_step_values(self, which: str = "all") -> dict[str, Tensor]:
        live = self._live_results
        if live is None:
            return {}
        vals = live.step_values(which)
        for e in live.entries.values():  # the plain name shows the latest step value
            if e.on_step and e.on_epoch and e.step_key in vals:
                vals[e.name] = vals[e.step_key]
        return vals

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """Latest step and epoch values (``name``, ``name_step``, ``name_epoch``), as tensors."""
        return {**self._epoch_metrics, **self._live_step_values()}

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """prog_bar=True values as floats (converted now: read it only when drawing)."""
        out = {k: v for k, v in self._epoch_metrics.items() if k in self._prog_bar_keys}
        out.update(self._live_step_values("prog_bar"))
        return {k: float(v) for k, v in out.items()}

    @property
    def logged_metrics(self) -> dict[str, float]:
        """What was last sent to the loggers (and epoch values, also without loggers).

        Step values are kept as tensors and converted to floats here, when read."""
        return {k: float(v) for k, v in self._logged.items()}

    # ------------------------------------------------------------------ public entry points
    def fit(self, model: TrainModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | os.PathLike | None = None) -> None:
        """Train ``model``; resume from ``ckpt_path`` (exactly, mid-epoch included) if given."""
        model, self._dynamo_ctx = unwrap_compiled(model)
        self._check_module(model, "fit")
        if datamodule is not None and (train_dataloaders is not None
                                       or val_dataloaders is not None):
            raise ValueError("Trainer.fit: pass either datamodule or dataloaders, not both")
        if train_dataloaders is not None and hasattr(train_dataloaders, "train_dataloader") and (
                hasattr(train_dataloaders, "setup")):
            datamodule, train_dataloaders = train_dataloaders, None
        return self._dispatch("fit", model, train_dataloaders, val_dataloaders, datamodule,
                              ckpt_path)

    def validate(self, model: TrainModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | os.PathLike | None = None, verbose: bool = True,
                 datamodule: Any = None) -> list[dict[str, float]]:
        """One pass of validation_step; returns one dict of epoch metrics per loader
        (``verbose``: also print them as a table, on rank zero)."""
        model = self._model_or_attached(model, "validate")
        _check_verbose("validate", verbose)
        return self._print_if(verbose, "validate", self._dispatch(
            "validate", model, None, dataloaders, datamodule, ckpt_path))

    def test(self, model: TrainModule | None = None, dataloaders: Any = None,
             ckpt_path: str | os.PathLike | None = None, verbose: bool = True,
             datamodule: Any = None) -> list[dict[str, float]]:
        """One pass of test_step; returns one dict of epoch metrics per loader
        (``verbose``: also print them as a table, on rank zero)."""
        model = self._model_or_attached(model, "test")
        _check_verbose("test", verbose)
        return self._print_if(verbose, "test", self._dispatch(
            "test", model, None, dataloaders, datamodule, ckpt_path))

    def _print_if(self, verbose: bool, stage: str, results: Any) -> Any:
        if verbose and self.is_global_zero and results:
            print_results(stage, results)
        return results

    def predict(self, model: TrainModule | None = None, dataloaders: Any = None,
                datamodule: Any = None, ckpt_path: str | os.PathLike | None = None) -> list[Any]:
        """predict_step over the loader(s); returns the outputs (a list per loader if several)."""
        model = self._model_or_attached(model, "predict")
        return self._dispatch("predict", model, None, dataloaders, datamodule, ckpt_path)

    def _model_or_attached(self, model: Any, stage: str) -> TrainModule:
        model, self._dynamo_ctx = unwrap_compiled(model)
        if model is None:
            model = self.lightning_module
            if model is None:
                raise ValueError(f"Trainer.{stage}: pass a module (no module was fitted before)")
        self._check_module(model, stage)
        return model

    @staticmethod
    def _check_module(model: Any, stage: str) -> None:
        if not isinstance(model, TrainModule):
            raise TypeError(f"Trainer.{stage}: model must be a trainer.TrainModule "
                            f"(got {type(model).__name__})")

    def _dispatch(self, stage: str, model: TrainModule, train_dl: Any, eval_dl: Any,
                  datamodule: Any, ckpt_path: Any) -> Any:
        dynamo_ctx, self._dynamo_ctx = self._dynamo_ctx, None
        ckpt_path = self._resolve_ckpt_path(ckpt_path)  # before ModelCheckpoint.setup moves on
        if dynamo_ctx is not None and self.strategy.launcher is not None:
            raise ValueError(f"Trainer.{stage}(torch.compile(model)): a compiled module cannot be "
                             "sent to the worker processes this strategy starts; pass the plain "
                             "module and call torch.compile on its parts in setup()")
        if self.strategy.launcher is not None:
            return self.strategy.launcher.launch(
                self._run_stage, stage, model, train_dl, eval_dl, datamodule, ckpt_path,
                trainer=self)
        with compiled_methods(model, dynamo_ctx):
            return self._run_stage(stage, model, train_dl, eval_dl, datamodule, ckpt_path)

    def _run_stage(self, stage: str, model: TrainModule, *args: Any) -> Any:
        """One stage in this process, timed by the profiler when one is set."""
        with profiled(self, model, stage):
            return self._run_stage_fn(stage, model, *args)

    # ------------------------------------------------------------------ one run
    def _run_stage_fn(self, stage: str, model: TrainModule, train_dl: Any, eval_dl: Any,
                      datamodule: Any, ckpt_path: Any) -> Any:
        self.state_stage = stage
        self.lightning_module = model
        self.datamodule = datamodule
        model.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        self.should_stop = False
        self._epoch_metrics = {}
        self._prog_bar_keys = set()
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_bench = torch.backends.cudnn.benchmark
        status = "success"
        self.strategy.setup_environment()
        if self.strategy.world_size > 1:
            reset_seed()  # every rank starts from seed_everything's seed, as Lightning's DDP does
        try:
            if self.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
            if self.benchmark is not None:
                torch.backends.cudnn.benchmark = self.benchmark
            # Lightning's order: configure_callbacks, prepare_data, setup, configure_model
            self._attach_module_callbacks(model)
            self._setup_hooks(model)
            if self.strategy.local_rank == 0:
                if datamodule is not None:
                    datamodule.prepare_data()
                if "prepare_data" in self._module_overrides:
                    model.prepare_data()
            self.strategy.barrier("prepare_data")
            if datamodule is not None:
                datamodule.setup(stage)
            self._call_hook("setup", stage)
            if "configure_model" in self._module_overrides:
                model.configure_model()
            if self.sync_batchnorm and self.strategy.world_size > 1:  # one process: BN as is
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place, as Lightning
            self.precision_plugin.convert_module(model)  # '*-true': weights to the dtype
            ckpt = None
            if ckpt_path is not None:
                ckpt_path = self._resolve_ckpt_path(ckpt_path)
                ckpt = load_checkpoint(ckpt_path, map_location=self.strategy.root_device)
                self._restore_hooks(model, ckpt, with_callbacks=stage == "fit")
            self.strategy.setup_module(model)
            self._transfer_fn = self._pick_transfer(model)
            if stage == "fit":
                if self.detect_anomaly:  # (False leaves a mode the user set alone)
                    with torch.autograd.set_detect_anomaly(True):
                        return self._fit(model, train_dl, eval_dl, datamodule, ckpt_path, ckpt)
                return self._fit(model, train_dl, eval_dl, datamodule, ckpt_path, ckpt)
            if ckpt is not None:
                model.load_state_dict(ckpt["state_dict"])
            if stage == "predict":
                return self._predict(model, eval_dl, datamodule)
            return self._evaluate(stage, model, eval_dl, datamodule)
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            for cb in self._cb_with.get("on_exception", ()):
                cb.on_exception(self, model, e)
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize(status, e) if _takes_error(lg) else lg.finalize(status)
            raise
        finally:
            model._results = None
            self._live_results = None
            if status == "success":
                self._call_hook("teardown", stage)
                if self.is_global_zero and stage in ("fit", "test", "validate"):
                    for lg in self.loggers:
                        lg.finalize("success")
            if datamodule is not None:
                datamodule.teardown(stage)
            self.strategy.teardown()
            if self.deterministic:
                torch.use_deterministic_algorithms(prev_det)
            torch.backends.cudnn.benchmark = prev_bench
            self._reset_transient()
            self.state_stage = None

    def _attach_module_callbacks(self, model: TrainModule) -> None:
        """Merge what ``configure_callbacks`` returns into the Trainer's callbacks, as Lightning
        does: a returned callback replaces the Trainer's of the same type (or a parent type);
        checkpoint callbacks go last."""
        if "configure_callbacks" not in self._module_overrides_of(model):
            return
        extra = model.configure_callbacks()
        extra = list(extra) if isinstance(extra, list | tuple) else [extra]
        for cb in extra:
            if not isinstance(cb, Callback):
                raise TypeError(f"{type(model).__name__}.configure_callbacks: {cb!r} is not a "
                                "trainer.callbacks.Callback")
        if not extra:
            return
        replaced = {type(c) for c in self.callbacks
                    if any(issubclass(type(e), type(c)) for e in extra)}
        cbs = [c for c in self.callbacks if type(c) not in replaced] + extra
        self.callbacks = sorted(cbs, key=lambda c: isinstance(c, ModelCheckpoint))

    def _pick_transfer(self, model: TrainModule) -> Any:
        """The batch path to the device, or None when there is nothing to do (CPU, no hooks):
        on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer, then
        ('*-true' precisions) the batch's floats to the precision's dtype."""
        o = self._module_overrides
        before = model.on_before_batch_transfer if "on_before_batch_transfer" in o else None
        after = model.on_after_batch_transfer if "on_after_batch_transfer" in o else None
        if "transfer_batch_to_device" in o:
            move = model.transfer_batch_to_device
        elif self.strategy.root_device.type != "cpu":
            move = _default_transfer
        else:
            move = None  # loaders yield CPU tensors: nothing to move
        convert = (self.precision_plugin.convert_input
                   if self.precision_plugin.true_dtype is not None else None)
        if before is None and after is None and convert is None:
            return move
        device = self.strategy.root_device

        def transfer(batch: Any, _device: torch.device, dataloader_idx: int) -> Any:
            if before is not None:
                batch = before(batch, dataloader_idx)
            if move is not None:
                batch = move(batch, device, dataloader_idx)
            if after is not None:
                batch = after(batch, dataloader_idx)
            if convert is not None:
                batch = convert(batch)
            return batch
        return transfer

    @staticmethod
    def _module_overrides_of(model: TrainModule) -> set[str]:
        return {name for name, fn in vars(TrainModule).items()
                if callable(fn) and not name.startswith("_")
                and getattr(type(model), name, None) is not fn}

    def _setup_hooks(self, model: TrainModule) -> None:
        self._cb_with = {name: [] for name in HOOK_NAMES}
        for cb in self.callbacks:
            for name in overridden_hooks(cb):
                self._cb_with.setdefault(name, []).append(cb)
        refuse_unsupported_hooks(model, self.callbacks)
        self._module_overrides = self._module_overrides_of(model)
        self._hooks = {name: self._hook_callers(name) for name in (
            "on_train_batch_start", "on_train_batch_end")}

    def _hook_callers(self, name: str) -> list[Any]:
        """Callables with the module hook's signature: overriding callbacks, then the module."""
        m = self.lightning_module
        out = [functools.partial(getattr(cb, name), self, m) for cb in self._cb_with.get(name, ())]
        if name in self._module_overrides:
            out.append(getattr(m, name))
        return out

    @staticmethod
    def _is_monitoring(cb: Any) -> bool:
        return isinstance(cb, ModelCheckpoint | EarlyStopping)

    def _call_hook(self, name: str, *args: Any, monitoring: bool | None = None,
                   module: bool = True) -> None:
        """Callbacks overriding ``name`` (filtered by monitoring if given), then the module."""
        m = self.lightning_module
        for cb in self._cb_with.get(name, ()):
            if monitoring is None or self._is_monitoring(cb) == monitoring:
                getattr(cb, name)(self, m, *args)
        if module and monitoring is not True and name in self._module_overrides:
            getattr(m, name)(*args)

    # ------------------------------------------------------------------ data
    def _loaders(self, stage: str, given: Any, datamodule: Any) -> list[Any]:
        kind = {"fit": "train", "validate": "val", "test": "test", "predict": "predict",
                "fit_val": "val"}[stage]
        if given is None:
            source = datamodule if datamodule is not None else self.lightning_module
            fn = getattr(source, f"{kind}_dataloader", None)
            given = fn() if callable(fn) else None
        if given is None:
            return []
        # a list of DataLoaders is several loaders; any other list is one iterable of batches
        several = isinstance(given, list | tuple) and given and all(
            isinstance(d, DataLoader) for d in given)
        dls = list(given) if several else [given]
        dls = [self.strategy.setup_dataloader(d, shuffle=(kind == "train")) for d in dls]
        for d in dls:
            add_worker_init_fn(d, self.global_rank)
        return dls

    def _limits(self, dls: list[Any], limit: int | float) -> list[float]:
        out = []
        for d in dls:
            n = limit_batches(sized_len(d), limit)
            if isinstance(limit, float) and limit > 0 and n == 0:
                raise ValueError(f"limit of {limit} of a loader with {sized_len(d)} batches "
                                 "gives 0 batches; raise the fraction or pass an int")
            out.append(n)
        return out

    @staticmethod
    def _sequential_copy(dl: Any) -> Any:
        if not isinstance(dl, DataLoader) or dl.batch_size is None:
            return dl
        return DataLoader(dl.dataset, batch_size=dl.batch_size, shuffle=False,
                          num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                          pin_memory=dl.pin_memory, drop_last=dl.drop_last)

    # ------------------------------------------------------------------ fit
    def _setup_fit_loaders(self, model: TrainModule, train_dl: Any, val_dl: Any,
                           datamodule: Any) -> tuple[Any, list[Any]]:
        """The training loader and validation loaders of fit, with their batch counts."""
        train_dls = self._loaders("fit", train_dl, datamodule)
        if not train_dls:
            raise ValueError("Trainer.fit: no training data: pass train_dataloaders, a "
                             "datamodule with train_dataloader(), or write "
                             "module.train_dataloader()")
        if len(train_dls) > 1:
            raise ValueError("Trainer.fit: one training loader expected "
                             f"(got {len(train_dls)}); combine them into one")
        dl = train_dls[0]
        if self.overfit_batches:
            dl = self._sequential_copy(dl)
        val_dls = self._loaders("fit_val", val_dl, datamodule)
        has_val_step = "validation_step" in self._module_overrides
        if val_dls and not has_val_step:
            raise ValueError("Trainer.fit: val_dataloaders given but "
                             f"{type(model).__name__}.validation_step is not written")
        self.num_training_batches = limit_batches(sized_len(dl), self.limit_train_batches)
        self.num_val_batches = self._limits(val_dls, self.limit_val_batches)
        self._val_enabled = bool(val_dls) and any(n > 0 for n in self.num_val_batches)
        self._val_dls = val_dls
        self.fit_loop.total_batches = self.num_training_batches
        return dl, val_dls

    def _reload_fit_loaders(self) -> tuple[Any, list[Any]]:
        """reload_dataloaders_every_n_epochs: ask the module / datamodule for new loaders."""
        loaders = self._setup_fit_loaders(self.lightning_module, None, None, self.datamodule)
        self.fit_loop.ctx.val_enabled = self._val_enabled
        return loaders

    def _fit(self, model: TrainModule, train_dl: Any, val_dl: Any, datamodule: Any,
             ckpt_path: Any, ckpt: dict[str, Any] | None) -> None:
        if self.reload_dataloaders_every_n_epochs and (train_dl is not None
                                                       or val_dl is not None):
            raise ValueError(
                f"Trainer(reload_dataloaders_every_n_epochs={self.reload_dataloaders_every_n_epochs}"
                "): loaders passed to fit cannot be built again; return them from "
                "train_dataloader()/val_dataloader() of the module or a datamodule")
        dl, val_dls = self._setup_fit_loaders(model, train_dl, val_dl, datamodule)

        self._call_hook("on_before_optimizer_setup")
        self._configure_optimizers(model)
        rng_at_epoch_start = None
        if ckpt is not None:
            rng_at_epoch_start = self._restore_fit(model, ckpt_path, ckpt)
        self._train_results = Results("train", self.strategy)
        if self.enable_model_summary and self.is_global_zero:
            # Lightning's ModelSummary callback logs it at fit start; ours goes to stderr too
            print(model.summarize(), file=sys.stderr)
        if self.is_global_zero:
            for lg in self.loggers:
                lg.log_hyperparams(dict(model.hparams))
        self._call_hook("on_fit_start")
        if self._val_enabled and self.num_sanity_val_steps != 0:
            self._sanity_check(val_dls)  # a resumed fit too, as in Lightning
        if rng_at_epoch_start is not None:  # after the sanity check, which may draw numbers
            restore_rng_states(rng_at_epoch_start)
        opt = self._optimization
        opt.check_loss = nonfinite_checker(self, self.strategy.root_device)
        self.fit_loop.ctx = FitContext(
            module=model, optimization=opt, results=self._train_results,
            transfer=self._transfer_fn, batch_start=self._hooks["on_train_batch_start"],
            batch_end=self._hooks["on_train_batch_end"], overrides=self._module_overrides,
            call_hook=self._call_hook, validate=self._run_validation_in_fit,
            val_enabled=self._val_enabled, log_train_step=self._log_train_step,
            update_epoch_metrics=self._update_epoch_metrics,
            check_watched_nonfinite=self._check_watched_nonfinite,
            live=self._results_live, reload_loaders=self._reload_fit_loaders,
            restart_rng=self._restart_rng)
        with logging_as(model, self._train_results, "train_epoch"):
            self._call_hook("on_train_start")
            self.fit_loop.run(dl, val_dls)
        with logging_as(model, self._train_results, "on_train_end"):  # self.log refuses here
            self._call_hook("on_train_end")
        self._call_hook("on_fit_end")

    def _configure_optimizers(self, model: TrainModule) -> None:
        with logging_as(model, Results("none"), "configure_optimizers"):  # self.log refuses
            conf = model.configure_optimizers()
        opts, scheds = _parse_optimizers(conf)
        if model.automatic_optimization:
            if not opts:
                raise ValueError(f"{type(model).__name__}.configure_optimizers returned no "
                                 "optimizer; automatic optimization needs exactly one")
            if len(opts) > 1:
                raise ValueError(
                    f"{type(model).__name__}.configure_optimizers returned {len(opts)} "
                    "optimizers: automatic optimization steps exactly one; set "
                    "self.automatic_optimization = False and step them in training_step "
                    "(self.optimizers(), self.manual_backward(loss))")
        self.optimizers = opts
        self.lr_scheduler_configs = scheds
        self._optimization = Optimization(self, model, opts, self._module_overrides,
                                          self._hook_callers)

    def _sanity_check(self, val_dls: list[Any]) -> None:
        n = self.num_sanity_val_steps
        limits = [min(lim, n) if n != -1 else lim for lim in self.num_val_batches]
        self.num_sanity_val_batches = limits
        self.sanity_checking = True
        self._call_hook("on_sanity_check_start")
        saved = (dict(self._epoch_metrics), set(self._prog_bar_keys))
        try:
            self._eval_pass("validate", val_dls, limits, log=False)
        finally:
            self._epoch_metrics, self._prog_bar_keys = saved
            self.sanity_checking = False
        self._call_hook("on_sanity_check_end")

    def _run_validation_in_fit(self, val_dls: list[Any]) -> None:
        if "on_validation_model_zero_grad" in self._module_overrides:
            self.lightning_module.on_validation_model_zero_grad()
        self._eval_pass("validate", val_dls, self.num_val_batches, log=True)

    # ------------------------------------------------------------------ evaluation
    def _model_eval(self, prefix: str) -> dict[torch.nn.Module, bool]:
        """Evaluation mode through ``on_{prefix}_model_eval`` (or ``.eval()``); returns every
        submodule's training flag, so the mode it had comes back after (a frozen backbone
        kept in eval stays there)."""
        m = self.lightning_module
        modes = {mod: mod.training for mod in m.modules()}
        if f"on_{prefix}_model_eval" in self._module_overrides:
            getattr(m, f"on_{prefix}_model_eval")()
        else:
            m.eval()
        return modes

    def _model_train(self, prefix: str, modes: dict[torch.nn.Module, bool]) -> None:
        m = self.lightning_module
        if f"on_{prefix}_model_train" in self._module_overrides:
            getattr(m, f"on_{prefix}_model_train")()
            return
        for mod, training in modes.items():
            mod.training = training

    def _eval_context(self, stage: str, log: bool) -> EvalContext:
        """What run_evaluation needs; on_step values go to the loggers after each batch, as
        Lightning does (when ``log``: not in the sanity check, never for predict; rank zero)."""
        log_steps = (log and not self.sanity_checking and stage != "predict"
                     and self.is_global_zero and bool(self.loggers))
        return EvalContext(
            module=self.lightning_module, overrides=self._module_overrides,
            hook_callers=self._hook_callers, transfer=self._transfer_fn,
            device=self.strategy.root_device, autocast=self.precision_plugin.context,
            live=self._results_live, log_step=self._log_eval_step if log_steps else None)

    def _eval_pass(self, stage: str, dls: list[Any], limits: list[float],
                   log: bool) -> dict[str, Tensor]:
        m = self.lightning_module
        prefix = "validation" if stage == "validate" else stage
        res = Results(stage, self.strategy)
        modes = self._model_eval(prefix)
        with logging_as(m, res, f"{'val' if stage == 'validate' else stage}_epoch"):
            self._call_hook(f"on_{prefix}_start")
            self._call_hook(f"on_{prefix}_epoch_start")
            outputs = run_evaluation(self._eval_context(stage, log), stage, dls, limits, res)
            if f"{prefix}_epoch_end" in self._module_overrides:
                getattr(m, f"{prefix}_epoch_end")(outputs[0] if len(outputs) == 1 else outputs)
            self._call_hook(f"on_{prefix}_epoch_end")
            values = self._update_epoch_metrics(res, log=log)
            self._call_hook(f"on_{prefix}_end")
        res.reset_epoch()
        self._model_train(prefix, modes)
        return values

    def _evaluate(self, stage: str, model: TrainModule, dls: Any, datamodule: Any
                  ) -> list[dict[str, float]]:
        prefix = "validation" if stage == "validate" else "test"
        dls = self._loaders(stage, dls, datamodule)
        if not dls:
            raise ValueError(f"Trainer.{stage}: no data: pass dataloaders or a datamodule with "
                             f"{'val' if stage == 'validate' else 'test'}_dataloader()")
        if f"{prefix}_step" not in self._module_overrides:
            raise ValueError(f"Trainer.{stage}: {type(model).__name__}.{prefix}_step is not "
                             "written")
        limits = self._limits(dls, self.limit_val_batches if stage == "validate"
                              else self.limit_test_batches)
        if stage == "validate":
            self.num_val_batches = limits
        else:
            self.num_test_batches = limits
        values = self._eval_pass(stage, dls, limits, log=True)
        floats = {k: float(v) for k, v in values.items()}
        if len(dls) == 1:
            return [floats]
        out = []
        for i in range(len(dls)):
            suffix = f"/dataloader_idx_{i}"
            out.append({k: v for k, v in floats.items()
                        if k.endswith(suffix) or "/dataloader_idx_" not in k})
        return out

    def _predict(self, model: TrainModule, dls: Any, datamodule: Any) -> list[Any]:
        dls = self._loaders("predict", dls, datamodule)
        if not dls:
            raise ValueError("Trainer.predict: no data: pass dataloaders or a datamodule with "
                             "predict_dataloader()")
        limits = self._limits(dls, self.limit_predict_batches)
        self.num_predict_batches = limits
        modes = self._model_eval("predict")
        with logging_as(model, Results("predict"), "predict_step"):  # self.log refuses here
            self._call_hook("on_predict_start")
            self._call_hook("on_predict_epoch_start")
            outputs = run_evaluation(self._eval_context("predict", False), "predict", dls,
                                     limits, None)
            self._call_hook("on_predict_epoch_end")
            self._call_hook("on_predict_end")
        for mod, training in modes.items():
            mod.training = training
        outputs = [self.strategy.gather_predictions(o, d) for o, d in zip(outputs, dls)]
        return outputs[0] if len(outputs) == 1 else outputs

    # ------------------------------------------------------------------ metrics bookkeeping
    def _update_epoch_metrics(self, res: Results, train: bool = False,
                              log: bool = True) -> dict[str, Tensor]:
        epoch_vals = res.epoch_values()
        step_vals = res.step_values()
        self._epoch_metrics.update(step_vals)
        self._epoch_metrics.update(epoch_vals)
        for e in res.entries.values():
            if e.on_epoch and e.on_step and e.epoch_key in epoch_vals:
                self._epoch_metrics[e.name] = epoch_vals[e.epoch_key]
            if e.prog_bar:
                self._prog_bar_keys.update((e.step_key, e.epoch_key))
        if log and not self.sanity_checking:
            to_log = {k: float(v) for k, v in res.epoch_values("logger").items()}
            if to_log:
                if train or self.state_stage == "fit":
                    to_log["epoch"] = float(self.current_epoch)
                self._logged.update(to_log)
                if self.is_global_zero:
                    for lg in self.loggers:
                        lg.log_metrics(to_log, step=max(self.global_step - 1, 0))
        return epoch_vals

    def _log_eval_step(self, stage: str, res: Results) -> None:
        """Send an evaluation batch's on_step values (``val_loss_step``...) to the loggers.

        As in Lightning, their step is the count of batches this stage has run in this
        Trainer (validation keeps counting across epochs), not ``global_step``."""
        step = self._eval_log_steps.get(stage, 0)
        self._eval_log_steps[stage] = step + 1
        vals = res.step_values("logger")
        if vals:
            self._send_step_values(vals, step)

    def _log_train_step(self) -> None:
        """Send on_step values to the loggers (every log_every_n_steps steps, rank zero)."""
        self._check_watched_nonfinite()
        vals: dict[str, Any] = self._train_results.step_values("logger")
        if not vals:
            return
        vals["epoch"] = float(self.current_epoch)
        self._send_step_values(vals, self.global_step - 1)

    def _send_step_values(self, vals: dict[str, Any], step: int) -> None:
        """Hand one batch's step values to the loggers and ``logged_metrics``.

        Values stay tensors: no per-batch .item() (a device sync on an accelerator). Loggers
        with ``accepts_tensors`` get them as they are (and convert many at once when they
        write); the others get floats. logged_metrics converts when it is read."""
        self._logged.update(vals)
        floats = None
        for lg in self.loggers:
            if getattr(lg, "accepts_tensors", False):
                lg.log_metrics(vals, step=step)
            else:
                if floats is None:
                    floats = {k: float(v) for k, v in vals.items()}
                lg.log_metrics(floats, step=step)

    # ------------------------------------------------------------------ non-finite losses
    def _nonfinite(self, loss: Tensor, epoch: int, batch_idx: int) -> None:
        if self.on_nonfinite_loss == "skip":
            return None
        raise NonFiniteLossError(
            f"training_step returned a non-finite loss ({loss.item()}) at epoch {epoch}, "
            f"batch {batch_idx} (global step {self.global_step}); lower the learning rate or "
            "check the data, or pass Trainer(on_nonfinite_loss='skip') to skip such batches")

    def _watch_nonfinite(self, loss: Tensor, batch_idx: int) -> None:
        if self._nf_acc is None:
            self._nf_acc = torch.zeros((), dtype=torch.float64, device=loss.device)
            self._nf_from = self.global_step
        self._nf_acc.add_(loss.detach())

    def _check_watched_nonfinite(self) -> None:
        if self._nf_acc is None:
            return
        acc, self._nf_acc = self._nf_acc, None
        if not math.isfinite(acc.item()):
            raise NonFiniteLossError(
                f"training_step returned a non-finite loss in epoch {self.current_epoch}, "
                f"between global steps {self._nf_from} and {self.global_step} (checked at each "
                "log point on an accelerator, without a per-step sync); pass "
                "Trainer(on_nonfinite_loss='skip') for a per-step check that skips the batch")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dict(self, weights_only: bool = False) -> dict[str, Any]:
        m = self.lightning_module
        if m is None:
            raise RuntimeError("Trainer.save_checkpoint: no module attached (call fit first)")
        cls = type(m)
        ckpt: dict[str, Any] = {
            "trainflow_version": _version(),
            "module_class": f"{cls.__module__}:{cls.__qualname__}",
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": m.state_dict(),
            "hyper_parameters": dict(m.hparams),
        }
        if not weights_only:
            ckpt["optimizer_states"] = [o.state_dict() for o in self.optimizers]
            ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in self.lr_scheduler_configs]
            ckpt["precision"] = self.precision_plugin.state_dict()
            ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in self.callbacks
                                 if hasattr(cb, "state_key")}
            ckpt["loops"] = {"fit": self.fit_loop.state_dict(),
                             "eval_logged_steps": dict(self._eval_log_steps)}
            ckpt["rng"] = collect_rng_states()
            if self.datamodule is not None and hasattr(self.datamodule, "state_dict"):
                ckpt["datamodule"] = self.datamodule.state_dict()
            for cb in self.callbacks:  # Lightning's order: callbacks, then the module
                cb.on_save_checkpoint(self, m, ckpt)
            m.on_save_checkpoint(ckpt)
        return ckpt

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False) -> None:
        """Write a checkpoint atomically (rank zero writes; every rank must call)."""
        ckpt = self._checkpoint_dict(weights_only)
        if self.is_global_zero:
            save_checkpoint(ckpt, filepath)
        self.strategy.barrier("save_checkpoint")

    def _resolve_ckpt_path(self, ckpt_path: Any) -> Any:
        """'best' / 'last' name the checkpoint callback's files; anything else is a path."""
        if ckpt_path in ("best", "last"):
            return find_checkpoint(self, ckpt_path)
        return ckpt_path

    def _restore_hooks(self, model: TrainModule, ckpt: dict[str, Any],
                       with_callbacks: bool) -> None:
        """The checkpoint's hooks, in Lightning's order (right after setup): the module's
        on_load_checkpoint, then (fit) each callback's on_load_checkpoint and load_state_dict."""
        model.on_load_checkpoint(ckpt)
        if not with_callbacks:
            return
        states = ckpt.get("callbacks", {})
        for cb in self.callbacks:
            cb.on_load_checkpoint(self, model, ckpt)
            key = getattr(cb, "state_key", None)
            if key in states:
                cb.load_state_dict(states[key])

    def _restore_fit(self, model: TrainModule, ckpt_path: Any,
                     ckpt: dict[str, Any]) -> dict[str, Any] | None:
        """Weights, optimizer, scheduler and loop state; returns the RNG states to restore
        when training starts at an epoch's beginning (mid-epoch, the loop restores them)."""
        missing = [k for k in ("optimizer_states", "loops", "rng") if k not in ckpt]
        if missing:
            raise ValueError(f"Trainer.fit(ckpt_path={str(ckpt_path)!r}): a weights-only "
                             f"checkpoint (no {missing}) cannot resume training; load it with "
                             "load_from_checkpoint instead")
        model.load_state_dict(ckpt["state_dict"])
        if len(ckpt["optimizer_states"]) != len(self.optimizers):
            raise ValueError(f"checkpoint {str(ckpt_path)!r} holds "
                             f"{len(ckpt['optimizer_states'])} optimizer states, "
                             f"configure_optimizers made {len(self.optimizers)}")
        for o, s in zip(self.optimizers, ckpt["optimizer_states"]):
            o.load_state_dict(s)
        for c, s in zip(self.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
            c.scheduler.load_state_dict(s)
        self.precision_plugin.load_state_dict(ckpt.get("precision", {}))
        if self.datamodule is not None and "datamodule" in ckpt:
            self.datamodule.load_state_dict(ckpt["datamodule"])
        self.current_epoch = ckpt["epoch"]
        self.global_step = ckpt["global_step"]
        loop = ckpt["loops"]["fit"]
        self.fit_loop.batches_total = loop.get("batches_total", 0)  # older checkpoints: 0
        # evaluation step logs go on counting where they were (older checkpoints: from 0)
        self._eval_log_steps = dict(ckpt["loops"].get("eval_logged_steps", {}))
        if loop["batches_consumed"] > 0 or loop["epoch_end_reached"]:
            self.fit_loop.load_state_dict(loop)
            self._restart_rng = ckpt["rng"]
            return None
        return ckpt["rng"]


# Lightning hooks we do not call, and why: fit refuses a module or callback that writes one
_REFUSED_HOOKS = {
    "configure_sharded_model": "deprecated by Lightning; write configure_model instead",
    "on_epoch_start": "removed in Lightning 2.0; use on_train_epoch_start",
    "on_epoch_end": "removed in Lightning 2.0; use on_train_epoch_end",
    "on_batch_start": "removed in Lightning 2.0; use on_train_batch_start",
    "on_batch_end": "removed in Lightning 2.0; use on_train_batch_end",
    "on_pretrain_routine_start": "removed in Lightning 2.0; use on_fit_start",
    "on_pretrain_routine_end": "removed in Lightning 2.0; use on_fit_start",
    "on_init_start": "removed in Lightning 2.0; use the callback's __init__",
    "on_init_end": "removed in Lightning 2.0; use the callback's __init__",
    "on_configure_sharded_model": "removed in Lightning 2.0; use setup",
    "on_keyboard_interrupt": "removed in Lightning 2.0; use on_exception",
    "on_hpc_save": "removed in Lightning 2.0; use on_save_checkpoint",
    "on_hpc_load": "removed in Lightning 2.0; use on_load_checkpoint",
}


def refuse_unsupported_hooks(module: Any, callbacks: list[Any]) -> None:
    """Raise, in one line, for the first hook a user wrote that this Trainer would never call."""
    for owner in (module, *callbacks):
        for name, why in _REFUSED_HOOKS.items():
            if callable(getattr(type(owner), name, None)):
                raise TypeError(f"{type(owner).__name__}.{name}: not supported ({why})")


def _check_verbose(stage: str, verbose: Any) -> None:
    if not isinstance(verbose, bool):
        raise ValueError(f"Trainer.{stage}(verbose=...): must be True or False (got {verbose!r})")


def _takes_error(lg: Any) -> bool:
    import inspect

    try:
        return len(inspect.signature(lg.finalize).parameters) >= 2
    except (TypeError, ValueError):
        return False


_SCHED_KEYS = {"scheduler", "interval", "frequency", "monitor", "name", "strict"}


def _sched_config(s: Any, opt_idx: int, monitor: str | None = None) -> LRSchedulerConfig:
    if isinstance(s, Mapping):
        unknown = set(s) - _SCHED_KEYS
        if unknown:
            raise ValueError(f"configure_optimizers: unknown lr_scheduler key(s) "
                             f"{sorted(unknown)} (allowed: {sorted(_SCHED_KEYS)})")
        if "scheduler" not in s:
            raise ValueError("configure_optimizers: the lr_scheduler dict needs a 'scheduler'")
        cfg = LRSchedulerConfig(s["scheduler"], s.get("interval", "epoch"),
                                s.get("frequency", 1), s.get("monitor", monitor),
                                s.get("name"), s.get("strict", True), opt_idx)
    else:
        cfg = LRSchedulerConfig(s, monitor=monitor, opt_idx=opt_idx)
    if cfg.interval not in ("epoch", "step"):
        raise ValueError(f"configure_optimizers: lr_scheduler 'interval' must be 'epoch' or "
                         f"'step' (got {cfg.interval!r})")
    if not isinstance(cfg.frequency, int) or isinstance(cfg.frequency, bool) or cfg.frequency < 1:
        raise ValueError(f"configure_optimizers: lr_scheduler 'frequency' must be an int >= 1 "
                         f"(got {cfg.frequency!r})")
    if not hasattr(cfg.scheduler, "step"):
        raise TypeError(f"configure_optimizers: {cfg.scheduler!r} is not an LR scheduler")
    if cfg.reduce_on_plateau and not cfg.monitor:
        raise ValueError("configure_optimizers: ReduceLROnPlateau needs a metric to watch: "
                         "return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, "
                         "'monitor': 'val_loss'}}")
    return cfg


def _parse_optimizers(conf: Any) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Every form of configure_optimizers' return value → (optimizers, scheduler configs)."""
    Opt = torch.optim.Optimizer  # noqa: N806
    if conf is None:
        return [], []
    if isinstance(conf, Opt):
        return [conf], []
    if isinstance(conf, Mapping):
        conf = [conf]
    is_seq = isinstance(conf, Sequence) and not isinstance(conf, str | bytes)
    if is_seq and len(conf) == 2 and isinstance(conf[0], list | tuple) and (
            isinstance(conf[1], list | tuple)):
        opts = list(conf[0])
        scheds = [_sched_config(s, 0) for s in conf[1]]
        for s in scheds:
            s.opt_idx = next((i for i, o in enumerate(opts)
                              if getattr(s.scheduler, "optimizer", None) is o), 0)
        _check_opts(opts)
        return opts, scheds
    if is_seq:
        opts, scheds = [], []
        for item in conf:
            if isinstance(item, Opt):
                opts.append(item)
            elif isinstance(item, Mapping):
                unknown = set(item) - {"optimizer", "lr_scheduler", "monitor"}
                if unknown or "optimizer" not in item:
                    raise ValueError(
                        "configure_optimizers: a dict needs 'optimizer' (and may have "
                        f"'lr_scheduler', 'monitor'); got keys {sorted(item)}")
                opts.append(item["optimizer"])
                if item.get("lr_scheduler") is not None:
                    scheds.append(_sched_config(item["lr_scheduler"], len(opts) - 1,
                                                item.get("monitor")))
            else:
                raise TypeError(f"configure_optimizers: unexpected {type(item).__name__} in "
                                "the returned list (optimizers or dicts expected)")
        _check_opts(opts)
        return opts, scheds
    raise TypeError("configure_optimizers must return an optimizer, a list of them, "
                    "([optimizers], [schedulers]), a dict {'optimizer', 'lr_scheduler'} or a "
                    f"list of such dicts (got {type(conf).__name__})")


def _check_opts(opts: list[Any]) -> None:
    for o in opts:
        if not isinstance(o, torch.optim.Optimizer):
            raise TypeError(f"configure_optimizers: {o!r} is not a torch.optim.Optimizer")
