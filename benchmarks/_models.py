"""Models with realistic parameter-tensor counts, and a way to give them gradients.

The gradient pass depends on the number of gradient tensors as much as on their size (a fused
kernel launches per tensor group, a Python loop pays per tensor), so the GPT-style model keeps
q, k, v and output projections as separate layers, as most codebases do: 16 tensors per block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (proj(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """A decoder-only transformer language model (pre-norm, learned positions, untied head)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class LSTMLM(nn.Module):
    """A 2-layer LSTM language model (Zaremba et al. 2014, small configuration, scaled down)."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx):
        out, _ = self.lstm(self.emb(idx))
        return self.head(out)


def deep_cnn(stages: tuple[int, ...] = (16, 32, 64), convs_per_stage: int = 6, classes: int = 10) -> nn.Sequential:
    """A plain deep CNN: conv-BN-ReLU layers in stages, halving the resolution between stages."""
    layers: list[nn.Module] = []
    channels = 3
    for i, width in enumerate(stages):
        for j in range(convs_per_stage):
            stride = 2 if (i > 0 and j == 0) else 1
            layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def mlp(width: int, depth: int) -> nn.Sequential:
    """A stack of ``depth`` square Linear layers with ReLU between them."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# Gradient-pass models: name -> factory. Sizes chosen for about 1M, 30M and 300M parameters.
GRAD_MODELS = {
    "MLP 1M": lambda: mlp(256, 16),
    "GPT 1M": lambda: TinyGPT(vocab=512, d=128, layers=4, heads=4, context=64),
    "MLP 30M": lambda: mlp(1024, 28),
    "GPT 30M": lambda: TinyGPT(vocab=4096, d=384, layers=16, heads=6, context=256),
    "GPT 300M": lambda: TinyGPT(vocab=16384, d=1024, layers=24, heads=16, context=1024),
    # Tiny stand-ins for smoke runs: the same code paths in milliseconds.
    "MLP tiny": lambda: mlp(16, 4),
    "GPT tiny": lambda: TinyGPT(vocab=32, d=16, layers=2, heads=2, context=8),
}


def count(model: nn.Module) -> tuple[int, int]:
    """(parameters, parameter tensors)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), len(params)


def human(n: int) -> str:
    if n >= 10**6:
        return f"{n / 1e6:.1f}M"
    if n >= 10**3:
        return f"{n / 1e3:.0f}k"
    return str(n)


def fill_grads(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter a random gradient with total norm about 10 (clipping to 1.0 is active).

    Clipping in place shrinks gradients; the first call brings the norm to about 1, and later
    calls scale by 1 - 1e-6, so repeated timing never drifts into denormal numbers.
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    for p in params:
        g = torch.randn(p.shape, generator=gen, device=p.device) * (10.0 / math.sqrt(total))
        p.grad = g.to(p.dtype)
