"""Module and parameter names as the user wrote the model, whatever wraps it.

Wrappers insert a component into every name: ``torch.compile`` (``OptimizedModule``) adds
``_orig_mod.``, ``DistributedDataParallel`` and ``DataParallel`` add ``module.``, FSDP1 adds
``_fsdp_wrapped_module.`` at each wrapped level, and activation checkpointing adds
``_checkpoint_wrapped_module.``. The same layer would then carry a different name under
compilation, under DDP, and in a plain run, so reports and dashboards of two runs could not be
compared. Guard unwraps the model it is given (``unwrap``), so its history, run store, probes,
findings, reports and loggers use the user's names; ``clean_name``, ``named_modules`` and
``named_parameters`` also strip the components of wrappers nested inside the model.

``module.`` is a common attribute name, so it is stripped only where a DDP or DataParallel
wrapper put it (recognised by type); the private ``_orig_mod``, ``_fsdp_wrapped_module`` and
``_checkpoint_wrapped_module`` components are stripped wherever they appear.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

# Components that only wrappers create: stripped from any name, at any depth.
PRIVATE_WRAPPER_COMPONENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})

# Wrapper class name -> the attribute holding the wrapped module. Matched by class name (any class
# in the MRO), so recognising a wrapper imports neither torch._dynamo nor torch.distributed.
_WRAPPER_ATTR = {
    "OptimizedModule": "_orig_mod",  # torch.compile
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "FullyShardedDataParallel": "_fsdp_wrapped_module",  # FSDP1; FSDP2's fully_shard keeps names
    "ActivationWrapper": "_checkpoint_wrapped_module",  # checkpoint_wrapper, offload_wrapper
}


def _wrapped(module: nn.Module) -> nn.Module | None:
    """The module that ``module`` wraps, or None when it is not a wrapper."""
    for cls in type(module).__mro__:
        attr = _WRAPPER_ATTR.get(cls.__name__)
        if attr is not None:
            inner = module._modules.get(attr)
            return inner if isinstance(inner, nn.Module) else None
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any stack of wrappers (``torch.compile(DDP(model))`` -> ``model``).

    The wrapped module shares its parameters and submodules with the wrapper, and the wrapper's
    forward runs it, so hooks on it fire and its names are the user's own.
    """
    inner = _wrapped(model)
    while inner is not None:
        model, inner = inner, _wrapped(inner)
    return model


def clean_name(name: str) -> str:
    """``name`` without the components wrappers insert: ``"enc._orig_mod.fc.weight"`` -> ``"enc.fc.weight"``.

    Names relative to an unwrapped root (see ``unwrap``); a leading ``module.`` is not touched here.
    """
    if "_" not in name:  # fast path: no private component can be present
        return name
    parts = name.split(".")
    kept = [p for p in parts if p not in PRIVATE_WRAPPER_COMPONENTS]
    return name if len(kept) == len(parts) else ".".join(kept)


def named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` with clean names; wrapper modules themselves are left out
    (each wraps a module listed under the same name)."""
    for name, module in unwrap(model).named_modules():
        if _wrapped(module) is None:
            yield clean_name(name), module


def named_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``model.named_parameters()`` with clean names."""
    for name, param in unwrap(model).named_parameters():
        yield clean_name(name), param


__all__ = ["clean_name", "named_modules", "named_parameters", "unwrap"]
