"""TrainModule.print / logger / loggers, as in Lightning."""

from __future__ import annotations

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import CSVLogger, Trainer


def test_logger_and_loggers_follow_the_trainer(tmp_path):
    m = TinyModule()
    assert m.logger is None and m.loggers == []
    lg = CSVLogger(tmp_path)
    seen = {}

    class Peek(TinyModule):
        def on_fit_start(self):
            seen["logger"], seen["loggers"] = self.logger, self.loggers
            self.print("hello from rank zero", 3)

    Trainer(max_epochs=1, logger=[lg], enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False).fit(Peek(), make_loader(make_data(16)))
    assert seen["logger"] is lg and seen["loggers"] == [lg]


def test_print_only_on_rank_zero(capsys):
    m = TinyModule()
    m.print("detached", end="!")
    assert capsys.readouterr().out == "detached!"

    class Rank1:
        is_global_zero = False

    m.trainer = Rank1()
    m.print("hidden")
    assert capsys.readouterr().out == ""


def test_print_in_fit_reaches_stdout(capsys):
    class Peek(TinyModule):
        def on_fit_start(self):
            self.print("hello", 3)

    Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False).fit(Peek(), make_loader(make_data(16)))
    assert capsys.readouterr().out == "hello 3\n"


def test_model_summary_at_fit_start_unless_disabled(capsys):
    dl = make_loader(make_data(16))
    kw = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    Trainer(**kw).fit(TinyModule(), dl)
    err = capsys.readouterr().err
    assert "Sequential" in err and "[2, 3]" in err  # the layer table, with output shapes
    assert "195 trainable params" in err
    Trainer(enable_model_summary=False, **kw).fit(TinyModule(), dl)
    assert "trainable params" not in capsys.readouterr().err


def test_model_summary_flag_is_checked():
    import pytest

    with pytest.raises(ValueError, match="enable_model_summary"):
        Trainer(enable_model_summary="yes")


def test_export_methods_take_lightnings_names(tmp_path):
    import pytest
    import torch

    from trainer.export import ExportError, verify

    m = TinyModule()
    info = m.to_onnx(file_path=tmp_path / "m.onnx", input_sample=torch.zeros(3, 8))
    assert verify(m, onnx_path=info.path).ok
    ts = m.to_torchscript(file_path=tmp_path / "m.pt", method="trace",
                          example_inputs=torch.zeros(3, 8), check_trace=False)
    assert verify(m, torchscript_path=tmp_path / "m.pt").ok and ts is not None
    with pytest.raises(ExportError, match="bogus"):  # kwargs reach torch.jit.trace
        m.to_torchscript(method="trace", bogus=1)
    with pytest.raises(TypeError, match="named file_path"):
        m.to_onnx(path=tmp_path / "x.onnx")
