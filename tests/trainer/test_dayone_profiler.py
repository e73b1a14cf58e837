"""profiler='simple' (durations table at the stage's end) and 'pytorch' (a Chrome trace)."""

from __future__ import annotations

import json

import pytest

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer
from trainer.profilers import PyTorchProfiler, SimpleProfiler

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
             enable_model_summary=False)


class Hooked(TinyModule):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass


def test_simple_counts_steps_hooks_and_epochs(tmp_path, capsys):
    ds = make_data(32)
    t = Trainer(max_epochs=2, profiler="simple", num_sanity_val_steps=0, **QUIET)
    m = Hooked()
    t.fit(m, make_loader(ds), make_loader(ds, shuffle=False))
    rec = t.profiler.recorded
    assert len(rec["[TrainModule]Hooked.training_step"]) == 2 * 4
    assert len(rec["[TrainModule]Hooked.validation_step"]) == 2 * 4
    assert len(rec["[hooks]on_train_batch_end"]) == 2 * 4
    assert len(rec["run_training_epoch"]) == 2 and len(rec["run_validation"]) == 2
    assert len(rec["[hooks]on_fit_start"]) == 1
    err = capsys.readouterr().err
    assert "FIT Profiler Report" in err and "[TrainModule]Hooked.training_step" in err
    # taken off again: the module and the Trainer are as before
    assert "training_step" not in vars(m) and "_call_hook" not in vars(t)
    t.test(m, make_loader(ds, shuffle=False), verbose=False)
    assert "TEST Profiler Report" in capsys.readouterr().err
    assert len(t.profiler.recorded["[TrainModule]Hooked.test_step"]) == 4


def test_pytorch_writes_a_loadable_chrome_trace(tmp_path):
    t = Trainer(max_epochs=1, profiler="pytorch", default_root_dir=tmp_path, **QUIET)
    t.fit(TinyModule(), make_loader(make_data(16)))
    path = t.profiler.trace_path
    assert path == str(tmp_path / "fit-rank0.pt.trace.json")
    with open(path) as f:
        trace = json.load(f)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "[TrainModule]TinyModule.training_step" in names  # our actions as labels
    assert "aten::linear" in names or "aten::addmm" in names  # and torch's operators
    t.fit(TinyModule(), make_loader(make_data(16)))
    assert t.profiler.trace_path == str(tmp_path / "fit-rank0-1.pt.trace.json")


def test_profiler_objects_and_bad_values():
    p = SimpleProfiler()
    assert Trainer(profiler=p).profiler is p
    assert isinstance(Trainer(profiler="pytorch").profiler, PyTorchProfiler)
    assert Trainer().profiler is None
    with pytest.raises(ValueError, match=r"Trainer\(profiler=...\)"):
        Trainer(profiler="advanced")
