"""Shared fixtures: parameters with gradients of chosen shapes and dtypes, and tiny models."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from torch import nn

# Keep the suite deterministic and within the 2-core budget.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Property tests: no per-example deadline (a loaded CI machine is slow, not wrong). Locally each
# run explores new examples; CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) replays a fixed sequence,
# so a red CI always means a change, and a failure found locally prints its reproduction blob.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def named_with_grads(shapes, dtype=torch.float32, seed=0, scale=1.0, names=None):
    """(name, Parameter) pairs whose .grad is random normal times ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        p = nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
        p.grad = (torch.randn(shape, generator=gen) * scale).to(dtype)
        out.append((names[i] if names else f"layer{i}.weight", p))
    return out


def clone_grads(named):
    return {n: p.grad.detach().clone() for n, p in named}


def mlp(depth=3, width=8, act=nn.Tanh, out=2, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


@pytest.fixture
def tiny_mlp():
    return mlp()
