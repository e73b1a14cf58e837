"""trainflow's training core: TrainModule, Trainer, callbacks, loggers, metrics, export.

Knows nothing of Prefect; MLflow only in trainer.loggers.
"""
