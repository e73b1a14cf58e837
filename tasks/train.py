"""Stage 2: build the TrainModule from config, fit it on the prepared splits, keep the best one.

Outputs live in ``<home>/stages/train/<key>/`` where ``key`` hashes the data content, the model and
trainer sections and the code version (this module's and the model class's source). Checkpoints
go to ``checkpoints/`` with ``last.ckpt`` kept every epoch: when an attempt is interrupted (killed,
crashed, retried), the next attempt with the same key resumes from ``last.ckpt`` instead of
starting over. ``result.json`` is written last and marks the stage finished.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.config import ModelConfig, PipelineConfig, TrackingConfig, TrainerConfig
from tasks.imports import build_datamodule, code_version, import_class
from tasks.prepare_data import file_sha256, load_split
from tasks.types import DatasetRef, StageError, TrainResult, content_key
from trainer.fileio import atomic_write_text

CODE_VERSION = "train-2"


def model_code_version(class_path: str) -> str:
    """A hash of the source file of the model class (so editing the model reruns training)."""
    return code_version(class_path)


def stage_key(
    data: DatasetRef, model: ModelConfig, trainer: TrainerConfig, datamodule: str | None = None
) -> str:
    """Cache key: data content, model and trainer sections, code versions (of the model class
    and of the DataModule class when ``data.datamodule`` names one)."""
    fields = {
        "stage": "train",
        "code": CODE_VERSION,
        "model_code": model_code_version(model.class_path),
        "data": data.content_hash,
        "model": model.digest(),
        "trainer": trainer.digest(),
    }
    if datamodule:  # only when set: keys of runs without one stay as they were
        fields["datamodule"] = [datamodule, code_version(datamodule, "data.datamodule")]
    return content_key(fields)


def data_kwargs(data: DatasetRef) -> dict[str, Any]:
    """What a model may take from the prepared data (a model takes the ones it names).

    ``num_features``, ``num_classes``; from ``stats.json`` (train split only): ``feature_mean``,
    ``feature_std``, ``cardinalities`` (categories per feature, 0 for a numeric one) and, for
    regression, ``target_mean`` and ``target_std``.
    """
    out: dict[str, Any] = {"num_features": len(data.features)}
    if data.num_classes is not None:
        out["num_classes"] = data.num_classes
    stats = json.loads(Path(data.stats_path).read_text())
    feats = stats["features"]
    out["feature_mean"] = [feats[f]["mean"] for f in data.features]
    out["feature_std"] = [feats[f]["std"] for f in data.features]
    codes = stats.get("categorical_codes") or {}
    # a category unseen in the data has no code: the model sees it as "unknown"
    out["cardinalities"] = [len(codes[f]) if f in codes else 0 for f in data.features]
    if stats.get("target"):
        out["target_mean"] = stats["target"]["mean"]
        out["target_std"] = stats["target"]["std"]
    return out


def build_module(model: ModelConfig, data: DatasetRef) -> Any:
    """Instantiate the TrainModule with ``model.kwargs`` and what it takes of ``data_kwargs``."""
    cls = import_class(model.class_path)
    kwargs = dict(model.kwargs)
    params = inspect.signature(cls.__init__).parameters
    for name, value in data_kwargs(data).items():
        if name in params:
            kwargs.setdefault(name, value)
    wants_classes = "num_classes" in params and params["num_classes"].default is inspect._empty
    if data.task == "regression" and wants_classes and "num_classes" not in kwargs:
        raise StageError(
            f"model.class_path: {model.class_path} is a classifier (it needs num_classes) but "
            "data.task is regression; pick a regression model (leave model.class_path unset "
            "for the built-in one) or change data.task"
        )
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise StageError(f"model.kwargs: {cls.__name__} does not take them: {err}") from None
    except Exception as err:  # noqa: BLE001 - bad values: retrying builds the same model
        raise StageError(f"model.kwargs: {cls.__name__}({kwargs}) failed: {err}") from None


def check_output(module: Any, x: Any, data: DatasetRef, class_path: str) -> None:
    """Refuse, in one line, a module whose output does not fit data.task.

    Classification needs logits [n, num_classes]; regression one value per row, [n] or [n, 1].
    Without this, a mismatch surfaces as a torch error deep in the loss.
    """
    import torch

    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(x)
    module.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    n = len(x)
    if data.task == "regression":
        if shape in ((n,), (n, 1)):
            return
        want = f"one value per row (shape [{n}] or [{n}, 1])"
    else:
        if shape == (n, data.num_classes):
            return
        want = f"logits for {data.num_classes} classes (shape [{n}, {data.num_classes}])"
    got = list(shape) if shape else type(out).__name__
    raise StageError(
        f"model.class_path: {class_path} outputs {got} for {n} rows, but data.task "
        f"{data.task} needs {want}; pick a model for the task (leave model.class_path unset "
        "for the built-in one) or change data.task"
    )


def dataloader(
    data: DatasetRef, split: str, batch_size: int, shuffle: bool, seed: int, ranks: int = 1
) -> Any:
    """A DataLoader over a split: arrow buffers → numpy view → torch without a copy.

    A shuffled (training) loader drops a last batch of a single row (per rank, for ``ranks``
    DDP workers): batch norm cannot train on one row, and one row in an epoch changes nothing.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x, y = load_split(data, split)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        xt = torch.from_numpy(x)  # read-only view of the parquet buffers; never written
        yt = torch.from_numpy(np.ascontiguousarray(y))
    gen = torch.Generator().manual_seed(seed)
    per_rank = -(-len(xt) // ranks)
    drop_last = shuffle and per_rank % batch_size == 1
    return DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=drop_last)


def _unlogged_monitor(err: KeyError, trainer: Any, cfg: PipelineConfig) -> str:
    """One line naming the config key whose monitor the module never logs (EarlyStopping's or
    ModelCheckpoint's KeyError), what it does log and the fix; else the error is re-raised."""
    tc = cfg.trainer
    watched = [("ModelCheckpoint(", "trainer.checkpoint.monitor", tc.checkpoint.monitor, None)]
    if tc.early_stopping is not None:
        watched.insert(0, ("EarlyStopping(", "trainer.early_stopping.monitor",
                           tc.early_stopping.monitor, "trainer.early_stopping: null"))
    text = str(err.args[0]) if err.args else ""
    logged = sorted(k for k in trainer.callback_metrics if k not in ("epoch", "step"))
    for source, key, monitor, off in watched:
        if text.startswith(source) and monitor not in trainer.callback_metrics:
            fix = f"set {key} to one of them" + (f" (or {off})" if off else "")
            return (
                f"{key}: {monitor!r} is not logged by {cfg.model.class_path}; it logs "
                f"{', '.join(logged) or 'nothing'}; {fix}"
            )
    raise err


def make_trainer(
    cfg: TrainerConfig,
    root: Path,
    logger: Any = None,
    checkpoint: bool = True,
    callbacks: list[Any] | None = None,
    **extra: Any,
) -> Any:
    """The Trainer for a stage, with ``callbacks``; with ``checkpoint`` (fitting), best + last
    into ``root/checkpoints`` and early stopping when ``cfg.early_stopping`` is set."""
    from trainer import Trainer
    from trainer.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = list(callbacks or [])
    if checkpoint and cfg.early_stopping is not None:
        es = cfg.early_stopping
        callbacks.append(
            EarlyStopping(
                monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta
            )
        )
    if checkpoint:
        callbacks.append(
            ModelCheckpoint(
                dirpath=root / "checkpoints",
                filename="best",
                monitor=cfg.checkpoint.monitor,
                mode=cfg.checkpoint.mode,
                save_top_k=1,
                save_last=True,
            )
        )
    return Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        deterministic=cfg.deterministic,
        default_root_dir=str(root),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        # Progress is no part of the result (nor the cache key): the CLI turns it on in a TTY.
        enable_progress_bar=os.environ.get("TRAINFLOW_PROGRESS") == "1",
        **extra,
    )


def mlflow_logger(
    tracking: TrackingConfig,
    run_name: str,
    tags: dict[str, str],
    run_id: str | None = None,
    plots: bool = True,
) -> Any:
    """An MLflowLogger on the configured (or embedded) store."""
    from trainer.loggers.mlflow import MLflowLogger

    return MLflowLogger(
        experiment_name=tracking.experiment,
        run_name=run_name,
        tracking_uri=tracking.uri,
        tags=tags,
        run_id=run_id,
        log_checkpoints=False,
        log_plots=plots,
    )


def fit(
    data: DatasetRef,
    cfg: PipelineConfig,
    root: Path,
    key: str,
    track: bool = True,
    callbacks: list[Any] | None = None,
    tags: dict[str, str] | None = None,
    plots: bool = True,
    logger: Any = None,
) -> TrainResult:
    """Run the stage without Prefect: fit into ``root`` (resuming from ``last.ckpt`` if there).

    ``callbacks`` join the stage's own (a sweep's pruning callback); ``tags`` go on the MLflow run;
    ``plots``: draw the metric curves into it at the end (a sweep's trials skip them);
    ``logger``: with ``track=False``, the Trainer's logger (a sweep's trial logs to a file).
    """
    if track and logger is not None:
        raise ValueError("train.fit: logger= is for track=False (track=True logs to MLflow)")
    import torch

    done = root / "result.json"
    if done.exists():
        finished = TrainResult.model_validate_json(done.read_text())
        if not (track and finished.mlflow_run_id and _run_gone(cfg, finished.mlflow_run_id)):
            return finished
        shutil.rmtree(root)  # its MLflow run is not in this store (moved, replaced): train anew
    root.mkdir(parents=True, exist_ok=True)
    tc = cfg.trainer
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    module = build_module(cfg.model, data)
    dm = build_datamodule(cfg.data.datamodule, data, tc) if cfg.data.datamodule else None
    if dm is None:  # a DataModule's batches may be anything: the module's own business
        train_dl = dataloader(data, "train", tc.batch_size, True, tc.seed, tc.devices)
        check_output(module, train_dl.dataset.tensors[0][:2], data, cfg.model.class_path)
        val_dl = dataloader(data, "val", tc.batch_size, False, tc.seed) if data.splits[
            "val"
        ].rows else None

    resume = _resume_point(root / "checkpoints")
    run_id_file = root / "mlflow_run_id"
    if track:
        prior = run_id_file.read_text().strip() if run_id_file.exists() else None
        logger = mlflow_logger(
            cfg.tracking,
            run_name=f"train-{key[:8]}",
            tags={"trainflow.data_hash": data.content_hash, "trainflow.train_key": key,
                  **(tags or {})},
            run_id=prior,  # continue the interrupted attempt's run
            plots=plots,
        )
        run_id = logger.run_id
        if run_id:
            run_id_file.write_text(run_id)
    trainer = make_trainer(tc, root, logger, callbacks=callbacks)
    ckpt = str(resume) if resume else None
    try:
        if dm is not None:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        else:
            trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
    except KeyError as err:
        raise StageError(_unlogged_monitor(err, trainer, cfg)) from err

    best = trainer.checkpoint_callback.best_model_path or str(root / "checkpoints" / "last.ckpt")
    best_path = Path(best)
    if not best_path.exists():
        raise StageError(f"train: no checkpoint was written in {root / 'checkpoints'}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _scalar(v)}
    result = TrainResult(
        checkpoint=best_path,
        checkpoint_sha256=file_sha256(best_path),
        metrics=metrics,
        epochs=int(trainer.current_epoch),
        global_step=int(trainer.global_step),
        mlflow_run_id=logger.run_id if track else None,
        resumed_from=resume,
        data_hash=data.content_hash,
        config_hash=hashlib.sha256(
            (cfg.model.digest() + cfg.trainer.digest()).encode()
        ).hexdigest(),
        cache_key=key,
        code_version=CODE_VERSION,
    )
    atomic_write_text(done, result.model_dump_json(indent=1))
    return result


def _resume_point(folder: Path) -> Path | None:
    """``last.ckpt`` when it reads back; a corrupt one (truncated by a kill, disk full) is moved
    aside with a warning and the best checkpoint, if readable, is resumed from instead."""
    from trainer.checkpoint import CheckpointError, load_checkpoint

    for name in ("last.ckpt", "best.ckpt"):
        path = folder / name
        if not path.exists():
            continue
        try:
            load_checkpoint(path)
            return path
        except CheckpointError as err:
            aside = path.with_name(f"{name}.corrupt")
            os.replace(path, aside)
            warnings.warn(f"{err}; moved to {aside.name}, resuming from the last good state",
                          stacklevel=2)
    return None


def _run_gone(cfg: PipelineConfig, run_id: str) -> bool:
    from trainer.loggers.mlflow_store import run_exists

    return not run_exists(cfg.tracking.uri, run_id)


def _scalar(v: Any) -> bool:
    try:
        return getattr(v, "numel", lambda: 1)() == 1
    except Exception:  # noqa: BLE001
        return False


def _cache_key(context: object, params: dict) -> str:
    cfg: PipelineConfig = params["cfg"]
    return "train-" + stage_key(params["data"], cfg.model, cfg.trainer, cfg.data.datamodule)


@task(name="train", cache_key_fn=_cache_key, persist_result=True)
def train(data: DatasetRef, cfg: PipelineConfig, home: str) -> TrainResult:
    """Prefect task: fit the model; resumes an interrupted attempt with the same key."""
    from tasks.settings import stage_dir

    key = stage_key(data, cfg.model, cfg.trainer, cfg.data.datamodule)
    return fit(data, cfg, stage_dir("train", Path(home)) / key, key)
