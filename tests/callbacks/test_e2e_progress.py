"""ProgressBar with the real Trainer: output when stdout is not a terminal, refresh throttle."""

import io
import time

import pytest
from rich.console import Console

pytest.importorskip("trainer.trainer")

from e2e_helpers import Scripted, loaders  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import ProgressBar  # noqa: E402


class CountingClock:
    """time.monotonic, counting its reads."""

    def __init__(self):
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return time.monotonic()


def run(tmp_path, pb, max_epochs=3, **kw):
    train, val = loaders(**kw)
    t = Trainer(max_epochs=max_epochs, callbacks=[pb] if pb else None, default_root_dir=tmp_path,
                logger=False, enable_checkpointing=False, num_sanity_val_steps=1,
                enable_progress_bar=pb is not None)
    t.fit(Scripted([0.5, 0.25, 0.125]), train, val)
    return t


def test_not_a_terminal_one_line_per_epoch_with_final_metrics(tmp_path):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False, width=200))
    t = run(tmp_path, pb)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # no sanity-check or per-validation lines in a log
    for epoch, (line, val) in enumerate(zip(lines, ["0.5", "0.25", "0.125"])):
        assert line.startswith(f"Epoch {epoch}/2 8/8 [")
        assert "train_loss=" in line and f"val_loss={val}" in line
    assert t.progress_bar_callback is pb


def test_default_bar_prints_to_stdout_when_it_is_not_a_terminal(tmp_path, capsys):
    train, val = loaders()
    t = Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False,
                enable_checkpointing=False)
    t.fit(Scripted([1.0, 0.5]), train, val)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["Epoch 0/1 8/8", "Epoch 1/1 8/8"]


def test_validate_and_test_print_their_own_line(tmp_path):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False, width=200))
    train, val = loaders()
    t = Trainer(callbacks=[pb], default_root_dir=tmp_path, logger=False,
                enable_checkpointing=False)
    t.validate(Scripted([0.75]), val)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Validation 4/4 [")
    assert lines[0].endswith("val_loss=0.75")


def test_refresh_is_throttled_and_metrics_are_read_only_when_drawing(tmp_path):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=True, width=150),
                     refresh_interval=0.2)
    clock = CountingClock()
    pb._clock = clock
    reads = {"n": 0}

    class CountingTrainer(Trainer):
        @property
        def progress_bar_metrics(self):
            reads["n"] += 1
            return super().progress_bar_metrics

    train, val = loaders(n=1024, batch_size=1)  # 1024 tiny steps per epoch
    t = CountingTrainer(max_epochs=2, callbacks=[pb], default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=2)
    start = time.monotonic()
    t.fit(Scripted(lr=0.001), train, val)
    elapsed = time.monotonic() - start
    steps = 2 * 1024
    # redraws: at most one per refresh_interval of elapsed time, plus one per bar opened/closed
    bars = 2 + 2  # two epochs, two validations
    assert pb.refresh_count <= elapsed / 0.2 + 2 * bars
    assert reads["n"] == pb.refresh_count  # metrics converted only when drawn
    # the clock is read on an adaptive stride, not once per step
    assert clock.reads < steps / 4
    assert "Epoch 1/1" in out.getvalue()


def test_disabled_bar_is_absent(tmp_path, capsys):
    t = run(tmp_path, None)
    assert t.progress_bar_callback is None
    assert capsys.readouterr().out == ""


def test_bar_alone_costs_no_outputs_dict_but_an_override_gets_them(tmp_path, monkeypatch):
    """The loop skips building on_train_batch_end's outputs for the bar's own hook (it never
    reads them); a subclass that overrides the hook gets them as Lightning passes them."""
    import trainer.loops as loops

    built = {"n": 0}
    real = loops.batch_output

    def counting(*args):
        built["n"] += 1
        return real(*args)

    monkeypatch.setattr(loops, "batch_output", counting)
    quiet = Console(file=io.StringIO(), force_terminal=True)
    run(tmp_path, ProgressBar(console=quiet), max_epochs=1)
    assert built["n"] == 0

    seen = []

    class Reading(ProgressBar):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(outputs)
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)

    run(tmp_path, Reading(console=quiet), max_epochs=1)
    assert built["n"] == len(seen) > 0
    assert all(set(o) == {"loss"} and not o["loss"].requires_grad for o in seen)
