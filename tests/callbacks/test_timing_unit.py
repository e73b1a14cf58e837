"""When ModelCheckpoint / EarlyStopping act: on_validation_end or on_train_epoch_end."""

from types import SimpleNamespace

import torch

from trainer.callbacks import EarlyStopping, ModelCheckpoint


def test_validation_at_epoch_end_is_acted_on_at_train_epoch_end(stub):
    t = stub()
    t.fit_loop = SimpleNamespace(batch_idx=t.num_training_batches - 1)
    es = EarlyStopping("val_loss", patience=5)
    es.setup(t, None, "fit")
    t.callback_metrics = {"val_loss": torch.tensor(1.0)}
    es.on_validation_end(t, None)
    assert es.best_score == float("inf")  # deferred: the epoch's metrics are not final yet
    t.callback_metrics = {"val_loss": torch.tensor(0.5)}
    es.on_train_epoch_end(t, None)
    assert es.best_score == 0.5


def test_mid_epoch_validation_is_acted_on_at_once_and_not_twice(stub, tmp_path):
    t = stub()
    t.fit_loop = SimpleNamespace(batch_idx=4)  # validation after 5 of 10 batches
    es = EarlyStopping("val_loss", patience=5)
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    for cb in (es, mc):
        cb.setup(t, None, "fit")
    t.global_step = 5
    t.callback_metrics = {"val_loss": torch.tensor(1.0)}
    for cb in (es, mc):
        cb.on_validation_end(t, None)
    assert es.best_score == 1.0 and len(t.saved) == 1
    t.fit_loop.batch_idx, t.global_step = 9, 10
    t.callback_metrics = {"val_loss": torch.tensor(0.75)}
    for cb in (es, mc):
        cb.on_validation_end(t, None)  # at the epoch's end: deferred
        cb.on_train_epoch_end(t, None)
    assert es.best_score == 0.75 and es.wait_count == 0 and len(t.saved) == 2


def test_epochs_without_validation_in_a_fit_with_validation_do_not_act(stub):
    t = stub()
    t.check_val_every_n_epoch = 2
    es = EarlyStopping("val_loss", patience=0)
    es.setup(t, None, "fit")
    t.callback_metrics = {"val_loss": torch.tensor(1.0)}
    es.on_train_epoch_end(t, None)  # epoch 0: no validation ran
    assert not t.should_stop and es.best_score == float("inf")


def test_forced_train_epoch_end(stub):
    t = stub()
    es = EarlyStopping("train_loss", patience=5, check_on_train_epoch_end=True)
    es.setup(t, None, "fit")
    t.callback_metrics = {"train_loss": torch.tensor(1.0)}
    es.on_validation_end(t, None)
    assert es.best_score == float("inf")
    es.on_train_epoch_end(t, None)
    assert es.best_score == 1.0
