"""'bf16-true', '16-true', '64-true': weights and inputs in the dtype, no autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.trainer.core_helpers import TinyModule, flat, make_data, make_loader
from trainer import Trainer
from trainer.precision import normalize_precision

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
             enable_model_summary=False)


@pytest.mark.parametrize("given, name", [("bf16-true", "bf16-true"), ("16-true", "16-true"),
                                         ("64-true", "64-true"), (64, "64-true"),
                                         ("64", "64-true")])
def test_names(given, name):
    assert normalize_precision(given) == name


@pytest.mark.parametrize("precision, dtype", [("bf16-true", torch.bfloat16),
                                              ("16-true", torch.float16),
                                              ("64-true", torch.float64)])
def test_module_inputs_and_new_tensors_take_the_dtype(precision, dtype, capsys):
    seen = {}

    class Peek(TinyModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            seen.update(x=x.dtype, y=y.dtype, new=torch.zeros(1).dtype,
                        autocast=torch.is_autocast_enabled("cpu"))
            return super().training_step(batch, batch_idx)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            seen["predict_x"] = batch[0].dtype
            return self(batch[0])

    m = Peek()
    t = Trainer(max_epochs=1, precision=precision, **{**QUIET, "enable_model_summary": True})
    t.fit(m, make_loader(make_data(16)))
    assert "[2, 3]" in capsys.readouterr().err  # the summary's forward ran in the dtype too
    assert {p.dtype for p in m.parameters()} == {dtype}
    assert seen == {"x": dtype, "y": torch.int64, "new": dtype, "autocast": False}
    out = t.predict(m, make_loader(make_data(8), shuffle=False))
    assert seen["predict_x"] == dtype and out[0].dtype == dtype
    assert torch.get_default_dtype() == torch.float32  # put back after each stage


def test_64_true_equals_a_hand_written_float64_loop():
    data = make_data(30)  # not a multiple of the batch size (see STACK-NOTES: RandomSampler)
    hand = TinyModule().double()
    opt = torch.optim.SGD(hand.parameters(), lr=0.1, momentum=0.9)
    loader = make_loader(data)
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(hand(x.double()), y).backward()
            opt.step()
    m = TinyModule()
    Trainer(max_epochs=2, precision="64-true", **QUIET).fit(m, make_loader(data))
    assert torch.equal(flat(m), flat(hand))


def test_unknown_precision_lists_the_new_names():
    with pytest.raises(ValueError, match="bf16-true.*16-true.*64-true"):
        Trainer(precision="8-true")
