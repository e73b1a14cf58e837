"""ProgressBar against the stub trainer: non-terminal output, refresh throttle, rank gating."""

import io
import pickle

from rich.console import Console

from trainer.callbacks import ProgressBar


class SimClock:
    """Simulated time: each training batch takes ``step_s``; counts how often it is read."""

    def __init__(self, step_s):
        self.t = 0.0
        self.step_s = step_s
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.t

    def batch_done(self):
        self.t += self.step_s


def fit_epochs(pb, t, n_epochs, n_batches, clock=None):
    pb.setup(t, None, "fit")
    pb.on_train_start(t, None)
    for epoch in range(n_epochs):
        t.current_epoch = epoch
        pb.on_train_epoch_start(t, None)
        for b in range(n_batches):
            if clock is not None:
                clock.batch_done()
            pb.on_train_batch_end(t, None, None, None, b)
        pb.on_train_epoch_end(t, None)
    pb.on_train_end(t, None)
    pb.teardown(t, None, "fit")


def test_not_a_terminal_prints_one_line_per_epoch(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False, width=200))
    t = stub()
    t.max_epochs = 3
    t.num_training_batches = 50
    t.progress_bar_metrics = {"loss": 0.25, "val_acc": 0.875}
    fit_epochs(pb, t, 3, 50)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Epoch 0/2 50/50 [")
    assert "it/s]" in lines[0] and lines[0].endswith("loss=0.25 val_acc=0.875")
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in a log file


def test_not_a_terminal_long_epoch_prints_at_most_every_log_interval(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False), log_interval=30.0)
    clock = SimClock(step_s=0.01)  # 20k batches of 10 ms: 200 s
    pb._clock = clock
    t = stub()
    t.num_training_batches = 20_000
    fit_epochs(pb, t, 1, 20_000, clock)
    lines = out.getvalue().splitlines()
    # one line per log_interval of elapsed time, plus the epoch's final line
    assert 4 <= len(lines) <= int(clock.t / 30.0) + 1


def test_refresh_is_throttled_and_the_clock_is_read_rarely(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=True, width=120),
                     refresh_interval=0.2)
    clock = SimClock(step_s=100e-6)  # a 100 µs step: 100k steps take 10 s
    pb._clock = clock

    class Metrics(dict):
        reads = 0

    class T(type(stub())):
        @property
        def progress_bar_metrics(self):
            Metrics.reads += 1
            return {"loss": 1.0}

        @progress_bar_metrics.setter
        def progress_bar_metrics(self, value):
            pass

    t = T(stub().default_root_dir)
    n = 100_000
    t.num_training_batches = n
    fit_epochs(pb, t, 1, n, clock)
    # at most one refresh per refresh_interval of elapsed time, plus the epoch's final draw,
    # and not much less (the bar still moves)
    assert 10 / 0.2 * 0.6 <= pb.refresh_count <= 10 / 0.2 + 1
    # the clock is read on a stride, not per step
    assert clock.reads < n / 20
    # metrics are read only when drawing
    assert Metrics.reads == pb.refresh_count
    assert "Epoch 0/9" in out.getvalue()


def test_disabled_on_non_zero_rank(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False))
    t = stub()
    t.is_global_zero = False
    fit_epochs(pb, t, 2, 10)
    assert out.getvalue() == "" and pb.refresh_count == 0 and not pb.is_enabled


def test_validation_and_test_lines_and_pickling(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=False))
    t = stub()
    t.num_val_batches = [3, 2]
    t.progress_bar_metrics = {"val_loss": 0.5}
    pb.setup(t, None, "validate")
    pb.on_validation_start(t, None)
    for b in range(5):
        pb.on_validation_batch_end(t, None, None, None, b)
    pb.on_validation_end(t, None)
    t.num_test_batches = [4]
    pb.on_test_start(t, None)
    for b in range(4):
        pb.on_test_batch_end(t, None, None, None, b)
    pb.on_test_end(t, None)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Validation 5/5 [") and lines[0].endswith("val_loss=0.5")
    assert lines[1].startswith("Testing 4/4 [")
    clone = pickle.loads(pickle.dumps(pb))
    assert clone.refresh_count == 2


def test_interactive_bars_in_a_terminal(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=True, width=150))
    t = stub()
    t.progress_bar_metrics = {"loss": 0.125}
    pb.setup(t, None, "fit")
    pb.on_sanity_check_start(t, None)
    t.sanity_checking = True
    pb.on_validation_start(t, None)
    pb.on_validation_batch_end(t, None, None, None, 0)
    pb.on_validation_end(t, None)
    t.sanity_checking = False
    pb.on_sanity_check_end(t, None)
    pb.on_train_epoch_start(t, None)
    for b in range(10):
        pb.on_train_batch_end(t, None, None, None, b)
    pb.on_validation_start(t, None)
    pb.on_validation_batch_end(t, None, None, None, 0)
    pb.on_validation_end(t, None)
    pb.on_train_epoch_end(t, None)
    pb.on_train_end(t, None)
    text = out.getvalue()
    assert "Epoch 0/9" in text and "10/10" in text and "loss=0.125" in text
    assert "Validation" in text


def test_terminal_live_area_holds_only_the_running_bar(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=True, width=150))
    t = stub()
    t.max_epochs = 6
    t.progress_bar_metrics = {"loss": 0.5}
    live_tasks = []
    pb.setup(t, None, "fit")
    pb.on_train_start(t, None)
    for epoch in range(6):
        t.current_epoch = epoch
        pb.on_train_epoch_start(t, None)
        live_tasks.append(len(pb._progress.tasks))
        for b in range(10):
            pb.on_train_batch_end(t, None, None, None, b)
        pb.on_train_epoch_end(t, None)
    pb.on_train_end(t, None)
    assert live_tasks == [1] * 6
    text = out.getvalue()
    for epoch in range(6):  # each finished epoch printed once above the live area
        assert text.count(f"Epoch {epoch}/5 10/10 [") == 1


def test_leave_false_prints_no_finished_epochs(stub):
    out = io.StringIO()
    pb = ProgressBar(console=Console(file=out, force_terminal=True, width=150), leave=False)
    fit_epochs(pb, stub(), 3, 10)
    assert "10/10 [" not in out.getvalue()
