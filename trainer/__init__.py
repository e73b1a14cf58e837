"""trainflow's training core: TrainModule, Trainer, callbacks, loggers, metrics, export.

Knows nothing of Prefect; MLflow only in trainer.loggers.
"""

from trainer.checkpoint import CheckpointError
from trainer.datamodule import DataModule
from trainer.loops import NonFiniteLossError
from trainer.module import TrainModule
from trainer.trainer import Trainer

__all__ = ["TrainModule", "Trainer", "DataModule", "CheckpointError", "NonFiniteLossError"]

try:  # re-exported once the callbacks and loggers packages provide them
    from trainer.callbacks import Callback  # noqa: F401

    __all__.append("Callback")
    from trainer.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint  # noqa: F401

    __all__ += ["EarlyStopping", "LearningRateMonitor", "ModelCheckpoint"]
    from trainer.callbacks import ProgressBar  # noqa: F401

    __all__.append("ProgressBar")
except ImportError:
    pass
try:
    from trainer.loggers import CSVLogger, Logger  # noqa: F401

    __all__ += ["Logger", "CSVLogger"]
except ImportError:
    try:
        from trainer.loggers import Logger  # noqa: F401

        __all__.append("Logger")
    except ImportError:
        pass
