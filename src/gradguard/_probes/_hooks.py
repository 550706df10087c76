"""The hook life cycle every probe shares: forward hooks that exist only while armed."""

from __future__ import annotations

from torch import nn

from gradguard._probes._base import Probe


class ForwardHookProbe(Probe):
    """Forward hooks on a fixed list of (name, module), registered by ``arm`` and removed by ``disarm``.

    Subclasses give ``_hook(name)`` (the hook for one module) and ``_reset()`` (clear what the
    previous armed step recorded).
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.modules = modules
        self._handles: list = []

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        if self._handles:
            return
        self._reset()
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def close(self) -> None:
        self.disarm()

    def _reset(self) -> None:
        pass

    def _hook(self, name: str):  # pragma: no cover - abstract
        raise NotImplementedError
