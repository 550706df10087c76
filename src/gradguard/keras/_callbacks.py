"""Keras callbacks that move GuardOptimizer's statistics to the host on a schedule."""

from __future__ import annotations

import keras


class FlushCallback(keras.callbacks.Callback):
    """Reads the optimizer's device rows every ``log_every`` batches and when ``fit`` ends.

    Batches are counted on the host (``on_train_batch_end``'s index), so the schedule costs no
    device read; with ``steps_per_execution=k`` Keras calls it every k steps.
    """

    def __init__(self, optimizer):
        super().__init__()
        self.guard = optimizer
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen % self.guard.log_every == 0:
            self.guard.flush()

    def on_train_end(self, logs=None):
        self.guard.flush()
