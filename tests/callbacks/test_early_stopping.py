import math

import pytest
import torch

from trainer.callbacks import EarlyStopping


def run(es, stub, values, on="validation"):
    """Feed one value per epoch; return the epoch at which the trainer was told to stop."""
    t = stub()
    es.setup(t, None, "fit")
    for epoch, v in enumerate(values):
        t.current_epoch = epoch
        t.callback_metrics = {"m": torch.tensor(v)}
        if on == "validation":
            es.on_validation_end(t, None)
        es.on_train_epoch_end(t, None)
        if t.should_stop:
            return epoch
    return None


@pytest.mark.parametrize(
    "kw, values, stop",
    [
        ({"patience": 2}, [3, 2, 2.5, 2.1, 2.2], 3),  # two checks without a new best
        ({"patience": 2}, [3, 2, 2.5, 1.9, 2.2, 2.0], 5),
        ({"patience": 2, "min_delta": 0.5}, [3, 2.6, 2.55, 1.0], 2),  # less than 0.5 below 3
        ({"patience": 2}, [3, 2.6, 2.55, 1.0], None),
        ({"patience": 1, "mode": "max"}, [0.1, 0.5, 0.4], 2),
        ({"patience": 3, "mode": "max"}, [0.1, 0.5, 0.6, 0.7], None),
        ({"patience": 5, "stopping_threshold": 0.5}, [1.0, 0.6, 0.49, 0.1], 2),
        ({"patience": 5, "divergence_threshold": 5.0}, [1.0, 2.0, 6.0], 2),
        ({"patience": 0}, [1.0, 1.0], 1),
    ],
)
def test_stops_at_the_right_epoch(stub, kw, values, stop):
    assert run(EarlyStopping("m", **kw), stub, values) == stop


def test_non_finite_value_stops_unless_check_finite_is_off(stub):
    assert run(EarlyStopping("m", patience=10), stub, [1.0, math.nan]) == 1
    assert run(EarlyStopping("m", patience=10, check_finite=False), stub, [1.0, math.nan]) is None


def test_no_validation_data_checks_at_train_epoch_end(stub):
    es = EarlyStopping("m", patience=1)
    t = stub()
    t.num_val_batches = []
    es.setup(t, None, "fit")
    for epoch, v in enumerate([1.0, 2.0]):
        t.current_epoch = epoch
        t.callback_metrics = {"m": torch.tensor(v)}
        es.on_train_epoch_end(t, None)
    assert t.should_stop and es.stopped_epoch == 1


def test_missing_key_is_a_clear_error_when_strict(stub):
    es = EarlyStopping("val_loss")
    t = stub()
    t.callback_metrics = {"train_loss": torch.tensor(1.0)}
    es.setup(t, None, "fit")
    with pytest.raises(KeyError, match=r"val_loss.*train_loss.*self\.log\('val_loss'"):
        es.on_validation_end(t, None)
    lax = EarlyStopping("val_loss", strict=False)
    lax.setup(t, None, "fit")
    lax.on_validation_end(t, None)
    assert not t.should_stop


def test_sanity_check_validation_is_ignored(stub):
    es = EarlyStopping("m", patience=0)
    t = stub()
    es.setup(t, None, "fit")
    t.sanity_checking = True
    t.callback_metrics = {"m": torch.tensor(float("nan"))}
    es.on_validation_end(t, None)
    assert not t.should_stop and es.wait_count == 0


def test_state_round_trip():
    a = EarlyStopping("m", patience=4)
    a.wait_count, a.best_score, a.stopped_epoch = 2, 0.25, 0
    b = EarlyStopping("m", patience=4)
    b.load_state_dict(a.state_dict())
    assert (b.wait_count, b.best_score) == (2, 0.25)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"monitor": ""}, "monitor"),
        ({"monitor": "m", "mode": "mean"}, "mode"),
        ({"monitor": "m", "min_delta": -1}, "min_delta"),
        ({"monitor": "m", "patience": -1}, "patience"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kw)
