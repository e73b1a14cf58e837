"""Trainer.fit(torch.compile(module)): the TrainModule inside runs, through the compiler."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.core_helpers import TinyModule, flat, make_data, make_loader
from trainer import Trainer

KW = dict(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
          enable_model_summary=False)


def _counting_backend(calls: list[int]):
    def backend(gm: torch.fx.GraphModule, example_inputs):
        calls.append(1)
        return gm.forward  # run the captured graph as it is (no C compiler needed)

    return backend


def test_fit_validate_test_a_compiled_module_matches_eager():
    data = make_data(32)
    plain = TinyModule()
    Trainer(**KW).fit(plain, make_loader(data))

    calls: list[int] = []
    inner = TinyModule()
    compiled = torch.compile(inner, backend=_counting_backend(calls))
    trainer = Trainer(**KW)
    trainer.fit(compiled, make_loader(data))
    assert calls, "the compiler never ran: the compiled module was not used"
    assert trainer.lightning_module is inner
    assert torch.equal(flat(inner), flat(plain))  # same steps, same weights
    assert "forward" not in vars(inner) and "training_step" not in vars(inner)  # put back
    assert next(iter(inner.state_dict())).startswith("net.")  # no _orig_mod. prefix

    before = len(calls)
    out = trainer.test(compiled, make_loader(data, shuffle=False))
    assert out[0]["test_acc"] == Trainer(**KW).test(plain, make_loader(data, shuffle=False))[0][
        "test_acc"]
    assert len(calls) > before  # test_step ran compiled too


def test_compiled_non_trainmodule_is_refused():
    with pytest.raises(TypeError, match="must be a trainer.TrainModule"):
        Trainer(**KW).fit(torch.compile(torch.nn.Linear(2, 2), backend="eager"), [])
