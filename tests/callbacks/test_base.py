from trainer.callbacks import HOOK_NAMES, Callback, overridden_hooks

CONTRACT_HOOKS = """setup teardown on_fit_start on_fit_end on_sanity_check_start on_sanity_check_end
on_train_start on_train_end on_train_epoch_start on_train_epoch_end on_train_batch_start
on_train_batch_end on_validation_start on_validation_end on_validation_epoch_start
on_validation_epoch_end on_validation_batch_start on_validation_batch_end on_test_start on_test_end
on_test_epoch_start on_test_epoch_end on_test_batch_start on_test_batch_end on_predict_start
on_predict_end on_predict_epoch_start on_predict_epoch_end on_predict_batch_start
on_predict_batch_end on_before_backward on_after_backward on_before_optimizer_step
on_before_zero_grad on_exception on_save_checkpoint on_load_checkpoint""".split()


def test_every_contract_hook_exists_and_is_a_noop():
    cb = Callback()
    assert set(CONTRACT_HOOKS) <= set(HOOK_NAMES)
    assert cb.on_train_batch_end(None, None, None, None, 0) is None
    assert cb.on_validation_batch_end(None, None, None, None, 0) is None
    assert cb.on_exception(None, None, RuntimeError()) is None
    assert cb.state_dict() == {}
    assert overridden_hooks(cb) == []


def test_overridden_hooks_lists_only_what_a_subclass_defines():
    class Parent(Callback):
        def on_fit_start(self, trainer, module):
            pass

    class Child(Parent):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            pass

        def state_dict(self):
            return {"x": 1}

    assert overridden_hooks(Child()) == ["on_fit_start", "on_train_batch_end"]


def test_state_key_is_class_name_plus_key_args():
    class Plain(Callback):
        pass

    class Keyed(Callback):
        def __init__(self, k):
            self.k = k

        def _state_key_args(self):
            return {"k": self.k}

    assert Plain().state_key == "Plain"
    assert Keyed(1).state_key != Keyed(2).state_key
    assert Keyed(1).state_key == "Keyed{'k': 1}"
