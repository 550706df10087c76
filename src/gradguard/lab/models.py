"""Small models for the lab, each a short module with an obvious ``forward``.

- ``DeepMLP``: a stack of equal-width layers; activation, initialisation, normalisation and
  residual connections are the knobs that decide whether gradients survive depth.
- ``SmallCNN``: a plain or residual stack of 3x3 convolutions for 8x8 images.
- ``SeqModel``: one recurrent cell type (simple tanh/sigmoid, IRNN, torch RNN, LSTM, GRU) and a
  linear read-out, for the sequence tasks.

References:
    Glorot & Bengio 2010 (normalised "Xavier" initialisation); He et al. 2015 (fan-in
    initialisation for ReLU); Ioffe & Szegedy 2015 (batch normalisation); Ba et al. 2016 (layer
    normalisation); He et al. 2016 (residual networks); Le et al. 2015 (IRNN).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradguard._errors import check_choice, check_int

ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}
INITS = ("default", "xavier", "he", "orthogonal")
NORMS = ("none", "batch", "layer")
CELLS = ("simple-tanh", "simple-sigmoid", "irnn", "rnn", "lstm", "gru")


def init_weight(weight: Tensor, init: str) -> None:
    """Re-initialise a weight in place.

    "default" leaves PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (n Var = 1/3, Glorot's
    "standard" init); "xavier" is N(0, 2 / (fan_in + fan_out)); "he" is N(0, 2 / fan_in);
    "orthogonal" is a random orthogonal matrix (flattened over the fan-in for convolutions).
    """
    if init == "xavier":
        nn.init.xavier_normal_(weight)
    elif init == "he":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif init == "orthogonal":
        nn.init.orthogonal_(weight)


def _norm1d(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class Block(nn.Module):
    """linear -> norm -> activation, plus the input when ``residual`` (widths must match)."""

    def __init__(self, fan_in: int, width: int, activation: str, norm: str, residual: bool, bias: bool):
        super().__init__()
        self.linear = nn.Linear(fan_in, width, bias=bias)
        self.norm = _norm1d(norm, width)
        self.act = ACTIVATIONS[activation]()
        self.residual = residual and fan_in == width

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm(self.linear(x)))
        return x + h if self.residual else h


class DeepMLP(nn.Module):
    """``depth`` blocks of ``width`` units and a linear head.

    Args:
        in_features, out_features: input and output sizes.
        depth: number of hidden blocks (the head is extra).
        width: units per hidden block.
        activation: one of ``ACTIVATIONS``.
        init: one of ``INITS`` for every linear layer (biases zeroed unless "default").
        norm: "none", "batch" or "layer", between each linear layer and its activation.
        residual: add each block's input to its output (all but the first block).
        bias: give the linear layers biases.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 10,
        width: int = 64,
        activation: str = "relu",
        init: str = "default",
        norm: str = "none",
        residual: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        check_int("depth", depth, minimum=1)
        check_int("width", width, minimum=1)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("init", init, INITS)
        check_choice("norm", norm, NORMS)
        sizes = [in_features] + [width] * depth
        self.blocks = nn.Sequential(*(Block(a, b, activation, norm, residual, bias) for a, b in zip(sizes, sizes[1:])))
        self.head = nn.Linear(width, out_features, bias=bias)
        if init != "default":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    init_weight(module.weight, init)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over channels and pixels
    return nn.Identity()


class ConvBlock(nn.Module):
    """Two 3x3 convolutions; with ``residual`` the input is added before the last ReLU (He et al. 2016).

    A residual net gets an init made for it (``residual_init``): He init for both convolutions,
    the branch's last one scaled by 1/sqrt(L) for L blocks. Each block then adds at most 1/L to
    the signal's variance, so it grows by at most e over the whole depth: Fixup's L^(-1/(2m-2))
    rule for m = 2 layers per branch (Zhang, Dauphin, Ma 2019), on the last layer instead of
    Fixup's zero (a zero last layer starts the net as a shallow one, which does not learn within
    the quick budget on 8x8 digits: global pooling after one convolution sees almost nothing).
    """

    def __init__(self, channels: int, norm: str, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
        self.norm1 = _norm2d(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm2d(norm, channels)
        self.residual = residual

    def residual_init(self, n_blocks: int) -> None:
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        with torch.no_grad():
            self.conv2.weight.mul_(n_blocks**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return torch.relu(x + h if self.residual else h)


class SmallCNN(nn.Module):
    """A ReLU CNN of ``depth`` weight layers for small images: a stem convolution,
    (depth - 2) / 2 two-convolution blocks at full resolution, global average pooling, a linear head.
    ``depth=20`` matches the ResNet paper's way of counting (6n + 2 with n = 3).
    """

    def __init__(
        self,
        depth: int = 20,
        norm: str = "none",
        residual: bool = False,
        channels: int = 16,
        in_channels: int = 1,
        num_classes: int = 10,
        init: str = "default",
    ):
        super().__init__()
        check_int("depth", depth, minimum=2)
        if depth % 2:
            raise ValueError(f"depth counts the stem, two convolutions per block and the head, so it must be even; got {depth}.")
        check_choice("norm", norm, NORMS)
        check_choice("init", init, INITS)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=norm == "none"), _norm2d(norm, channels), nn.ReLU())
        self.blocks = nn.Sequential(*(ConvBlock(channels, norm, residual) for _ in range((depth - 2) // 2)))
        self.head = nn.Linear(channels, num_classes)
        if residual and init == "default":  # He init for the stem too: the blocks start near identity, so its scale carries through
            nn.init.kaiming_normal_(self.stem[0].weight, nonlinearity="relu")
            if self.stem[0].bias is not None:
                nn.init.zeros_(self.stem[0].bias)
            for block in self.blocks:
                block.residual_init(len(self.blocks))
        if init != "default":
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    init_weight(module.weight, init)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))


class SeqModel(nn.Module):
    """A recurrent cell stack and a linear read-out, batch-first.

    Args:
        cell: "simple-tanh" / "simple-sigmoid" (``gradguard.rnn.SimpleRNN``, an explicit loop
            over time), "rnn" (``torch.nn.RNN``, tanh, fused), "irnn" (``torch.nn.RNN`` with ReLU,
            identity recurrent matrix, zero biases, input weights N(0, 0.001^2): Le et al. 2015),
            "lstm", "gru".
        input_size, output_size: feature sizes.
        hidden: units per layer.
        layers: stacked recurrent layers.
        readout: "last" (one output per sequence) or "all" (one per step).
        init: for the Elman cells (simple-*, "rnn"), a scheme of ``gradguard.rnn.init_rnn``
            ("default", "orthogonal", "identity", "basic_tanh", "smart_tanh", ...); "irnn" always
            uses "identity".
        max_singular_value: for the Elman cells: rescale each recurrent matrix to this
            largest singular value (Pascanu et al.'s lambda_1).
        forget_bias: for "lstm": the forget gates' initial bias (Le et al. try 1 to 20).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        output_size: int,
        hidden: int = 64,
        layers: int = 1,
        readout: str = "last",
        init: str | None = None,
        max_singular_value: float | None = None,
        forget_bias: float | None = None,
    ):
        super().__init__()
        self.cell = check_choice("cell", cell, CELLS)
        check_int("hidden", hidden, minimum=1)
        check_int("layers", layers, minimum=1)
        self.readout = check_choice("readout", readout, ("last", "all"))
        elman = cell not in ("lstm", "gru")
        if not elman and (init is not None or max_singular_value is not None):
            raise ValueError(f"init and max_singular_value set an Elman recurrent matrix; they do not apply to cell={cell!r}.")
        if forget_bias is not None and cell != "lstm":
            raise ValueError(f"forget_bias applies to cell='lstm', not {cell!r}.")
        scheme = "identity" if cell == "irnn" else (init or "default")
        if cell in ("lstm", "gru", "rnn", "irnn"):
            kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "irnn": nn.RNN}[cell]
            extra = {"nonlinearity": "relu"} if cell == "irnn" else {}
            self.rnn = kind(input_size, hidden, num_layers=layers, batch_first=True, **extra)
        else:
            from gradguard.rnn import SimpleRNN

            nonlinearity = {"simple-tanh": "tanh", "simple-sigmoid": "sigmoid"}[cell]
            sizes = [input_size] + [hidden] * (layers - 1)
            stack = [SimpleRNN(n, hidden, nonlinearity, batch_first=True, init=scheme, max_singular_value=max_singular_value) for n in sizes]
            self.rnn = stack[0] if layers == 1 else nn.ModuleList(stack)
        if cell in ("rnn", "irnn") and (scheme != "default" or max_singular_value is not None):
            from gradguard.rnn import init_rnn

            init_rnn(self.rnn, scheme, max_singular_value=max_singular_value)
        if forget_bias is not None:
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        p[hidden : 2 * hidden] = forget_bias  # gate order: input, forget, cell, output
                    elif name.startswith("bias_hh"):
                        p[hidden : 2 * hidden] = 0.0
        self.head = nn.Linear(hidden, output_size)

    def recurrent_weights(self) -> list[Tensor]:
        """Each layer's recurrent matrix (for LSTM/GRU: the stacked gate matrices)."""
        return [p for name, p in self.rnn.named_parameters() if "weight_hh" in name]

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.rnn, nn.ModuleList):
            h = x
            for layer in self.rnn:
                h = layer(h)[0]
        else:
            h = self.rnn(x)[0]
        return self.head(h[:, -1] if self.readout == "last" else h)


__all__ = ["ACTIVATIONS", "CELLS", "INITS", "NORMS", "DeepMLP", "SeqModel", "SmallCNN", "init_weight"]
