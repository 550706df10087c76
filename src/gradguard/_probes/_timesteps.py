"""The per-time-step probe: ||dL/dh_t|| over t for every recurrent module, on its probe steps.

The replay that measures it lives in ``gradguard.rnn`` (``TimestepProbe``, public); this is the
instrument Guard schedules. It costs several training steps on its step (about seven for a
2-layer LSTM), so its default period is ten times the others'.
"""

from __future__ import annotations

import torch
from torch import nn

from gradguard._probes._base import Probe


class TimestepsProbe(Probe):
    """One ``gg.rnn.TimestepProbe`` per recurrent module (SimpleRNN, nn.RNN, nn.LSTM, nn.GRU)."""

    name = "timesteps"
    kind = "vectors"

    def __init__(self, model: nn.Module):
        from gradguard.rnn._cells import is_recurrent
        from gradguard.rnn._timesteps import TimestepProbe

        self.per_module = {name: TimestepProbe(module) for name, module in model.named_modules() if is_recurrent(module)}

    def arm(self) -> None:
        for probe in self.per_module.values():
            probe.arm()

    def disarm(self) -> None:
        for probe in self.per_module.values():
            probe.disarm()

    def collect(self, ctx=None) -> dict:
        names, vectors = [], []
        for module, probe in self.per_module.items():
            if probe.ready:  # the module ran with a graph this step and its output got a gradient
                with torch.enable_grad():  # the replay differentiates; Guard's step runs under no_grad
                    vectors.append(probe.collect())
                names.append(module)
        return {"timestep_grad_norm": (tuple(names), vectors)} if names else {}

    def close(self) -> None:
        for probe in self.per_module.values():
            probe.close()
