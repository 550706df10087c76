"""The zoo's models and data: small enough that a run takes a second or two on one CPU thread.

Every builder reads a flat config dict (see ``zoo.BASE``); the faults the zoo needs (an op that
makes NaN, a sum that overflows float16) are modules of their own, so the locator can name them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
GAIN = {"relu": "relu", "leaky_relu": "leaky_relu", "gelu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


# ---------------------------------------------------------------------- fault modules
class LogFeatures(nn.Module):
    """log of a linear map: NaN wherever the map is negative (unless ``eps`` clamps the domain)."""

    def __init__(self, width: int, eps: float | None):
        super().__init__()
        self.proj, self.eps = nn.Linear(width, width), eps

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(x)
        z = z + 2.0  # a log-scale feature that is positive almost everywhere
        return torch.log(z.clamp_min(self.eps)) if self.eps else torch.log(z)


class SqrtFeatures(nn.Module):
    """Distances between the examples of the batch, sqrt of summed squares: finite forward, an
    infinite derivative at the zero distance of each example to itself."""

    def __init__(self, width: int, eps: float | None):
        super().__init__()
        self.proj, self.eps = nn.Linear(width, width), eps

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(x)
        d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
        dist = torch.sqrt(d2 + self.eps) if self.eps else torch.sqrt(d2)
        return z + dist.mean(1, keepdim=True) / z.shape[1]


class MaskedMean(nn.Module):
    """Mean over the positions a mask keeps: 0/0 for an example whose mask is empty."""

    def __init__(self, eps: float | None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, positions, width)
        mask = (x[..., :1] > 0.0).to(x.dtype)
        count = mask.sum(1)
        return (x * mask).sum(1) / (count + self.eps if self.eps else count)


class RMSPool(nn.Module):
    """Root-mean-square over positions, as sqrt(sum of squares / n): in float16 the sum of squares
    passes 65504 although the result (the RMS) is small."""

    def __init__(self, upcast: bool):
        super().__init__()
        self.upcast = upcast

    def forward(self, x: Tensor) -> Tensor:  # (batch, positions, width)
        if self.upcast:
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                return torch.sqrt(x.pow(2).sum(1) / x.shape[1])
        return torch.sqrt(x.pow(2).sum(1) / x.shape[1])


# ---------------------------------------------------------------------- models
class MLP(nn.Module):
    def __init__(self, cfg: dict, d_in: int, d_out: int):
        super().__init__()
        w, act = cfg["width"], cfg["activation"]
        layers: list[nn.Module] = [nn.Linear(d_in, w), ACTIVATIONS[act]()]
        for _ in range(cfg["depth"] - 1):
            block = [nn.Linear(w, w)]
            if cfg["norm"] == "batch":
                block.append(nn.BatchNorm1d(w))
            elif cfg["norm"] == "layer":
                block.append(nn.LayerNorm(w))
            block.append(ACTIVATIONS[act]())
            layers.append(Residual(nn.Sequential(*block)) if cfg["residual"] else nn.Sequential(*block))
        self.body = nn.Sequential(*layers)
        fault = cfg["fault"]
        self.fault = LogFeatures(w, cfg["eps"]) if fault == "log" else SqrtFeatures(w, cfg["eps"]) if fault == "sqrt" else None
        self.head = nn.Linear(w, d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if self.fault is not None:
            h = self.fault(h)
        return self.head(h)


class Residual(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x + self.inner(x)


class SetNet(nn.Module):
    """A set of positions pooled into one vector: a masked mean of the inputs (0/0 for an empty
    mask), or a per-position MLP then RMS pooling (float16-unsafe)."""

    def __init__(self, cfg: dict, d_in: int, d_out: int):
        super().__init__()
        w = cfg["width"]
        self.masked = cfg["fault"] == "div"
        if self.masked:
            self.embed, self.pool = nn.Identity(), MaskedMean(cfg["eps"])
            self.head = nn.Sequential(nn.Linear(d_in, w), nn.ReLU(), nn.Linear(w, d_out))
        else:
            self.embed = nn.Sequential(nn.Linear(d_in, w), nn.ReLU(), nn.Linear(w, w))
            self.pool = RMSPool("pool" in cfg["upcast"])
            self.head = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, d_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.embed(x)))


class CNN(nn.Module):
    def __init__(self, cfg: dict, channels: int, d_out: int):
        super().__init__()
        c, act = cfg["width"], cfg["activation"]
        layers: list[nn.Module] = [nn.Conv2d(channels, c, 3, padding=1), ACTIVATIONS[act]()]
        for _ in range(cfg["depth"] - 1):
            block = [nn.Conv2d(c, c, 3, padding=1)]
            if cfg["norm"] in ("batch", "layer"):
                block.append(nn.BatchNorm2d(c))
            block.append(ACTIVATIONS[act]())
            layers.append(Residual(nn.Sequential(*block)) if cfg["residual"] else nn.Sequential(*block))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean((2, 3)))


class Recurrent(nn.Module):
    def __init__(self, cfg: dict, d_in: int, d_out: int):
        super().__init__()
        w, cell = cfg["width"], cfg["cell"]
        if cell == "lstm":
            self.rnn = nn.LSTM(d_in, w, batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(d_in, w, batch_first=True)
        else:
            self.rnn = nn.RNN(d_in, w, nonlinearity=cell, batch_first=True)
        self.head = nn.Linear(w, d_out)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """Token and position embeddings, encoder blocks with a causal mask, LayerNorm, a tied-free head."""

    def __init__(self, cfg: dict, vocab: int, length: int):
        super().__init__()
        d = cfg["width"]
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=cfg["ln"] == "pre")
            for _ in range(cfg["depth"])
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((length, length), float("-inf")), 1), persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            h = block(h, src_mask=self.mask[: idx.shape[1], : idx.shape[1]], is_causal=True)
        return self.head(self.ln(h))


def build(cfg: dict, task) -> nn.Module:
    torch.manual_seed(cfg["seed"])
    kind = cfg["model"]
    if kind == "mlp":
        model = MLP(cfg, task.d_in, task.d_out)
    elif kind == "set":
        model = SetNet(cfg, task.d_in, task.d_out)
    elif kind == "cnn":
        model = CNN(cfg, task.d_in, task.d_out)
    elif kind == "rnn":
        model = Recurrent(cfg, task.d_in, task.d_out)
    elif kind == "transformer":
        model = TinyTransformer(cfg, task.d_out, task.length)
    else:
        raise ValueError(f"unknown model {kind!r}")
    initialise(model, cfg)
    return model


def initialise(model: nn.Module, cfg: dict) -> None:
    """The init the config names: 'default' (PyTorch's), 'he', 'xavier', or a scale times the default."""
    init, scale, gain_name = cfg["init"], cfg["init_scale"], GAIN.get(cfg["activation"], "relu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module is not getattr(model, "head", None):
                if init == "he":
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu" if gain_name != "leaky_relu" else "leaky_relu")
                elif init == "xavier":
                    nn.init.xavier_normal_(module.weight, gain=nn.init.calculate_gain(gain_name))
                if init in ("he", "xavier") and module.bias is not None:
                    module.bias.zero_()
                module.weight.mul_(scale)
                if cfg["bias_init"] is not None and module.bias is not None and init == "default":
                    module.bias.fill_(cfg["bias_init"])
            if isinstance(module, nn.RNN):
                if init == "orthogonal":
                    nn.init.orthogonal_(module.weight_hh_l0)
                elif cfg["recurrent_radius"] is not None:
                    w = module.weight_hh_l0
                    nn.init.normal_(w)
                    w.mul_(cfg["recurrent_radius"] / torch.linalg.eigvals(w).abs().max())


# ---------------------------------------------------------------------- data
class Task:
    """A fixed synthetic data set, labelled by a random teacher so that a healthy run can fit it."""

    def __init__(self, cfg: dict):
        g = torch.Generator().manual_seed(1000 + cfg["seed"])
        n, kind = 2048, cfg["model"]
        self.length = 1
        if kind == "transformer":
            vocab, length = 16, 16
            self.d_in, self.d_out, self.length = vocab, vocab, length
            # A random sparse Markov chain: each token has 2 likely successors.
            trans = torch.full((vocab, vocab), 0.02)
            for t in range(vocab):
                trans[t, torch.randperm(vocab, generator=g)[:2]] = 1.0
            trans /= trans.sum(1, keepdim=True)
            seq = torch.zeros(n, length + 1, dtype=torch.long)
            seq[:, 0] = torch.randint(vocab, (n,), generator=g)
            for i in range(length):
                seq[:, i + 1] = torch.multinomial(trans[seq[:, i]], 1, generator=g).squeeze(1)
            self.x, self.y = seq[:, :-1], seq[:, 1:]
        elif kind == "rnn":
            length = cfg["seq_len"]
            self.d_in, self.d_out = 4, 2
            self.x = torch.randn(n, length, 4, generator=g)
            self.y = (self.x[:, :, 0].mean(1) > 0).long()  # every step counts, the first as much as the last
        elif kind == "cnn":
            self.d_in, self.d_out = 3, 4
            self.x = torch.randn(n, 3, 8, 8, generator=g)
            self.x += torch.randn(n, 3, 1, 1, generator=g)  # a colour per image, which the label depends on
            teacher = torch.randn(3, 4, generator=g)
            self.y = (self.x.mean((2, 3)) @ teacher).argmax(1)
        elif kind == "set":
            self.d_in, self.d_out = 8, 4
            positions = 64 if cfg["fault"] != "div" else 8
            self.x = torch.randn(n, positions, 8, generator=g) * (cfg["input_scale"])
            if cfg["fault"] == "div":
                self.x[: n // 8, :, 0] = -self.x[: n // 8, :, 0].abs() - 0.1  # these examples have an empty mask
                self.x = self.x[torch.randperm(n, generator=g)]
            teacher = torch.randn(8, 4, generator=g)
            keep = (self.x[..., :1] > 0).float()
            pooled = (self.x * keep).sum(1) / keep.sum(1).clamp_min(1.0) if cfg["fault"] == "div" else self.x.pow(2).mean(1).sqrt()
            self.y = (pooled @ teacher).argmax(1)
        else:
            self.d_in, self.d_out = 32, 10
            self.x = torch.randn(n, 32, generator=g)
            w1, w2 = torch.randn(32, 64, generator=g) / math.sqrt(32), torch.randn(64, 10, generator=g) / 8
            self.y = (torch.tanh(self.x @ w1) @ w2).argmax(1)
        self.n = n
        self._g = torch.Generator().manual_seed(2000 + cfg["seed"])

    def batch(self, size: int) -> tuple[Tensor, Tensor]:
        i = torch.randint(self.n, (size,), generator=self._g)
        return self.x[i], self.y[i]
