"""validate / test print a results table when verbose (the default, as in Lightning)."""

from __future__ import annotations

import pytest

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer


def _trainer() -> Trainer:
    return Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False)


def test_test_prints_the_table_and_returns_the_same(capsys):
    dl = make_loader(make_data(16), shuffle=False)
    out = _trainer().test(TinyModule(), dl)
    printed = capsys.readouterr().out
    assert "Test metric" in printed and "DataLoader 0" in printed
    line = next(ln for ln in printed.splitlines() if "test_acc" in ln)
    assert str(out[0]["test_acc"]) in line
    quiet = _trainer().test(TinyModule(), dl, verbose=False)
    assert capsys.readouterr().out == ""
    assert quiet == out


def test_validate_two_loaders_one_column_each(capsys):
    dl = make_loader(make_data(16), shuffle=False)
    out = _trainer().validate(TinyModule(), [dl, make_loader(make_data(8, seed=1), shuffle=False)])
    printed = capsys.readouterr().out
    assert "Validate metric" in printed and "DataLoader 1" in printed
    line = next(ln for ln in printed.splitlines() if "val_loss" in ln)
    assert "dataloader_idx" not in line
    for i in (0, 1):
        assert str(out[i][f"val_loss/dataloader_idx_{i}"]) in line


def test_verbose_must_be_a_bool():
    with pytest.raises(ValueError, match="verbose"):
        _trainer().test(TinyModule(), make_loader(make_data(8)), verbose="yes")
