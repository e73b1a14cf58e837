"""Callbacks the Trainer calls around its loop."""

from trainer.callbacks.base import HOOK_NAMES, Callback, overridden_hooks

__all__ = ["Callback", "HOOK_NAMES", "overridden_hooks"]
