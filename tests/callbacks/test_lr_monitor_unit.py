from types import SimpleNamespace

import pytest
import torch

from trainer.callbacks import LearningRateMonitor
from trainer.loggers import Logger


class ListLogger(Logger):
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def params():
    return [torch.nn.Parameter(torch.zeros(2))]


def test_names_values_and_intervals(stub):
    sgd = torch.optim.SGD(params(), lr=0.1, momentum=0.9)
    adam = torch.optim.Adam([{"params": params()}, {"params": params(), "lr": 0.01}], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    log = ListLogger()
    t = stub(loggers=[log])
    t.optimizers = [sgd, adam]
    t.lr_scheduler_configs = [SimpleNamespace(scheduler=sched, interval="epoch", frequency=1,
                                              monitor=None, name=None)]
    lrm = LearningRateMonitor(log_momentum=True)
    lrm.on_train_start(t, None)
    for epoch in range(3):
        t.current_epoch = epoch
        lrm.on_train_epoch_start(t, None)
        for _ in range(2):
            lrm.on_train_batch_start(t, None, None, 0)
            t.global_step += 1
        sgd.step()
        sched.step()
    assert lrm.lrs["lr-SGD"] == pytest.approx([0.1, 0.05, 0.025])
    assert lrm.lrs["lr-SGD-momentum"] == pytest.approx([0.9, 0.9, 0.9])
    # Adam has no scheduler: logged at every step, one key per param group, betas[0] as momentum
    assert lrm.lrs["lr-Adam-pg0"] == pytest.approx([1e-3] * 6)
    assert lrm.lrs["lr-Adam-pg1"] == pytest.approx([1e-2] * 6)
    assert lrm.lrs["lr-Adam-pg0-momentum"][0] == pytest.approx(0.9)
    assert (0, {"lr-SGD": 0.1, "lr-SGD-momentum": 0.9}) in log.rows


def test_step_interval_respects_log_every_n_steps_and_accumulation(stub):
    sgd = torch.optim.SGD(params(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0 / (s + 1))
    log = ListLogger()
    t = stub(loggers=[log])
    t.log_every_n_steps = 2
    t.optimizers = [sgd]
    t.lr_scheduler_configs = [SimpleNamespace(scheduler=sched, interval="step", frequency=1,
                                              monitor=None, name="my-lr")]
    lrm = LearningRateMonitor(logging_interval="step")
    lrm.on_train_start(t, None)
    lrm.on_train_epoch_start(t, None)  # 'step' interval: nothing at epoch start
    for batch in range(12):  # accumulate 2 batches per optimizer step
        lrm.on_train_batch_start(t, None, None, batch)
        if batch % 2 == 1:
            sgd.step()
            sched.step()
            t.global_step += 1
    assert [s for s, _ in log.rows] == [0, 2, 4]
    assert lrm.lrs["my-lr"] == pytest.approx([1.0, 1 / 3, 1 / 5])


def test_needs_a_logger(stub):
    with pytest.raises(RuntimeError, match="no logger"):
        LearningRateMonitor().on_train_start(stub(), None)
    with pytest.raises(ValueError, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")


def test_two_optimizers_of_one_class_get_distinct_names(stub):
    a = torch.optim.SGD(params(), lr=0.1)
    b = torch.optim.SGD(params(), lr=0.2)
    t = stub(loggers=[ListLogger()])
    t.optimizers = [a, b]
    stats = LearningRateMonitor().extract_stats(t, "any")
    assert stats == {"lr-SGD": 0.1, "lr-SGD-1": 0.2}
