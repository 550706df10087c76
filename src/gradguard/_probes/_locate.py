"""Find the first module where a NaN or Inf appeared, forward or backward, and whether it made it.

Hooks on every module record, in execution order, whether its inputs and outputs were finite
(forward) and whether the gradients reaching its output and leaving through its inputs were
finite (backward). The flags stay on the device until the end, then are read in one transfer.

A module *produced* a non-finite value when its inputs were finite and its output was not
(forward), or when the gradient reaching its output was finite and one leaving through its
inputs was not (backward: e.g. sqrt at 0, whose derivative is infinite). Otherwise it *passed
on* a value that arrived non-finite. The first producer is reported; failing one, the first
module that saw the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradguard._events import NonfiniteLocationEvent
from gradguard._finding import Finding
from gradguard._probes._hooks import ForwardHookProbe


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _bad(tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(any non-finite, any NaN) over floating tensors, as device bools."""
    floats = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not floats:
        false = torch.zeros((), dtype=torch.bool)
        return false, false
    device = floats[0].device
    bad = torch.stack([~torch.isfinite(t).all() for t in floats]).any().to(device)
    nan = torch.stack([torch.isnan(t).any() for t in floats]).any().to(device)
    return bad, nan


@dataclass
class _Event:
    """One module call seen in one direction.

    ``upstream_bad``: what arrived was non-finite (forward: its inputs; backward: the gradient at
    its output). ``bad``: what it passed on was (forward: its output; backward: the gradient
    leaving through its inputs).
    """

    order: int
    name: str
    kind: str  # "forward" or "backward"
    upstream_bad: Tensor
    bad: Tensor
    nan: Tensor


class NonfiniteLocator(ForwardHookProbe):
    """Hooks that record where non-finite values appear; arm, run a step, then ``result()``.

    As one of Guard's probes it has no period: a non-finite step arms it for the next step
    (``on_nonfinite``), whose ``collect`` records a ``NonfiniteLocationEvent``.
    """

    name = "locate"
    period = None

    def on_nonfinite(self, ctx) -> bool:
        return True

    def collect(self, ctx) -> dict:
        finding = self.result()
        if finding is not None:
            ctx.emit(NonfiniteLocationEvent(ctx.step, where=list(finding.where), message=finding.message, remedy=finding.remedy, extra=dict(finding.evidence)))
        return {}

    def __init__(self, model: nn.Module):
        super().__init__([(name or "(model)", m) for name, m in model.named_modules()])
        self._events: list[_Event] = []
        self._grad_out: dict[int, tuple[Tensor, Tensor]] = {}
        self._counter = 0

    def _reset(self) -> None:
        self._events.clear()
        self._grad_out.clear()
        self._counter = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _hook(self, name: str):
        def hook(module, inputs, output):
            ins, outs = _tensors(inputs), _tensors(output)
            in_bad, _ = _bad(ins)
            out_bad, nan = _bad(outs)
            self._events.append(_Event(self._next(), name, "forward", in_bad, out_bad, nan))
            call = self._counter
            # Backward: the gradient reaching this call's outputs, then the ones leaving by its inputs.
            for t in outs:
                if t.requires_grad:
                    t.register_hook(self._grad_out_hook(call))
            for t in ins:
                if t.requires_grad:
                    t.register_hook(self._grad_in_hook(name, call))

        return hook

    def _grad_out_hook(self, call: int):
        def hook(grad: Tensor):
            bad, nan = _bad([grad])
            prev = self._grad_out.get(call)
            self._grad_out[call] = (bad | prev[0], nan | prev[1]) if prev is not None else (bad, nan)

        return hook

    def _grad_in_hook(self, name: str, call: int):
        def hook(grad: Tensor):
            bad, nan = _bad([grad])
            out_bad = self._grad_out.get(call, (torch.zeros((), dtype=torch.bool, device=grad.device),))[0]
            self._events.append(_Event(self._next(), name, "backward", out_bad.to(grad.device), bad, nan))

        return hook

    def result(self) -> Finding | None:
        """Read the flags (one host transfer) and name the first producer; None when all was finite."""
        self.disarm()
        if not self._events:
            return None
        flags = torch.stack([torch.stack([e.upstream_bad.cpu(), e.bad.cpu(), e.nan.cpu()]) for e in self._events]).tolist()
        events = sorted(zip(self._events, flags), key=lambda pair: pair[0].order)
        self._events.clear()
        seen = [(e, f) for e, f in events if f[1]]
        if not seen:
            return None
        # A non-finite forward value explains everything non-finite in the backward pass after it.
        forward = [(e, f) for e, f in seen if e.kind == "forward"]
        seen = forward or seen
        producers = [(e, f) for e, f in seen if not f[0]]
        event, flag = (producers or seen)[0]
        produced = bool(producers)
        kind = "NaN" if flag[2] else "Inf"
        where_in = "output" if event.kind == "forward" else "gradient with respect to its inputs"
        if produced:
            source = "finite inputs" if event.kind == "forward" else "a finite gradient at its output"
            message = f"{kind} first appears in the {event.kind} {where_in} of {event.name!r}, from {source}: this module produced it."
        else:
            message = f"{kind} first seen in the {event.kind} pass at {event.name!r}, which received it already non-finite (from the data or code outside any module)."
        return Finding(
            code="NONFINITE",
            severity="error",
            message=message,
            where=[event.name],
            evidence={"direction": event.kind, "produced": produced, "value": kind},
            remedy=_remedy(event.kind),
        )


def _remedy(direction: str) -> str:
    if direction == "forward":
        return (
            "Look for log, sqrt, division, exp or pow in that module's forward: guard the domain "
            "(torch.log(x.clamp_min(1e-12)), x / (y + eps)), compute it in float32 under autocast, "
            "and check the learning rate if weights grew."
        )
    return (
        "A finite forward value with an infinite derivative (sqrt or norm at 0, pow with a "
        "fractional exponent at 0, acos/asin at +-1): add an epsilon inside (torch.sqrt(x + 1e-12)) "
        "or clamp the argument away from the singular point."
    )


def locate_nonfinite(model: nn.Module, closure: Callable[[], Tensor]) -> Finding | None:
    """Run ``closure()`` (a forward pass returning a scalar loss) and its backward, and name the
    first module whose forward output or backward gradient became NaN or Inf.

    Returns a ``Finding`` (code "NONFINITE", ``where[0]`` the module, ``evidence`` with the
    direction and whether the module produced the value or passed it on), or None when every
    value was finite. Gradients are restored afterwards; parameters are not changed.
    """
    from gradguard._names import unwrap

    model = unwrap(model)  # torch.compile/DDP wrappers off: the module is named as the user wrote it
    saved = {name: (p.grad.clone() if p.grad is not None else None) for name, p in model.named_parameters()}
    locator = NonfiniteLocator(model)
    locator.arm()
    try:
        loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"closure() must return a scalar loss tensor, got {type(loss).__name__}{'' if not isinstance(loss, Tensor) else ' of shape ' + str(tuple(loss.shape))}.")
        loss_bad = not bool(torch.isfinite(loss.detach()).all())
        if loss.requires_grad:
            loss.backward()
        found = locator.result()
    finally:
        locator.disarm()
        for name, p in model.named_parameters():
            p.grad = saved[name]
    if found is None and loss_bad:
        return Finding(
            code="NONFINITE",
            severity="error",
            message="The loss is non-finite while every module's output was finite: the loss computation produced it.",
            where=["(loss)"],
            evidence={"direction": "forward", "produced": True, "value": "NaN" if bool(torch.isnan(loss.detach()).any()) else "Inf"},
            remedy="Check the loss function's inputs: log of probabilities at 0 (use log_softmax / cross_entropy on logits), division by a zero count, targets out of range.",
        )
    return found
