"""Lab models: shapes, initialisations, normalisation and skips, recurrent scales."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.lab.models import CELLS, DeepMLP, SeqModel, SmallCNN


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("residual", [False, True])
def test_deep_mlp_shapes_and_layers(norm, residual):
    model = DeepMLP(64, 10, depth=5, width=32, activation="tanh", norm=norm, residual=residual)
    assert model(torch.randn(8, 64)).shape == (8, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6  # five blocks and the head
    kinds = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
    assert all(isinstance(b.norm, kinds[norm]) for b in model.blocks)
    assert [b.residual for b in model.blocks] == [False] + [residual] * 4  # the first block changes width


def test_residual_block_adds_its_input():
    model = DeepMLP(8, 1, depth=2, width=8, activation="relu", residual=True)
    block = model.blocks[1]
    x = torch.randn(4, 8)
    assert torch.allclose(block(x), x + torch.relu(block.linear(x)))


@pytest.mark.parametrize("init, variance", [("xavier", lambda fi, fo: 2 / (fi + fo)), ("he", lambda fi, fo: 2 / fi)])
def test_deep_mlp_init_scales(init, variance):
    torch.manual_seed(0)
    model = DeepMLP(256, 1, depth=3, width=256, init=init, bias=False)
    w = model.blocks[1].linear.weight
    assert w.var().item() == pytest.approx(variance(256, 256), rel=0.05)


def test_deep_mlp_default_init_is_pytorch_uniform():
    torch.manual_seed(0)
    w = DeepMLP(256, 1, depth=2, width=256).blocks[1].linear.weight
    assert w.abs().max().item() <= 1 / math.sqrt(256)


def test_deep_mlp_rejects_unknown_names_with_suggestions():
    with pytest.raises(ValueError, match="'relu'"):
        DeepMLP(4, 1, activation="rlu")
    with pytest.raises(ValueError, match="norm"):
        DeepMLP(4, 1, norm="batchnorm")


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("residual", [False, True])
def test_small_cnn(norm, residual):
    model = SmallCNN(depth=6, norm=norm, residual=residual, channels=4)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5  # depth 6 = stem + 2 blocks of 2 + head
    with pytest.raises(ValueError, match="even"):
        SmallCNN(depth=7)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("readout", ["last", "all"])
def test_seq_model_every_cell(cell, readout):
    model = SeqModel(cell, 3, 2, hidden=5, layers=2, readout=readout)
    out = model(torch.randn(4, 7, 3))
    assert out.shape == ((4, 2) if readout == "last" else (4, 7, 2))
    assert len(model.recurrent_weights()) == 2


def test_seq_model_recurrent_scale_and_irnn():
    for cell in ("simple-tanh", "rnn"):
        model = SeqModel(cell, 2, 1, hidden=16, init="orthogonal", max_singular_value=1.5)
        w = model.recurrent_weights()[0]
        assert torch.linalg.svdvals(w.detach().double()).max().item() == pytest.approx(1.5, rel=1e-5)
    irnn = SeqModel("irnn", 2, 1, hidden=6)
    assert torch.equal(irnn.rnn.weight_hh_l0, torch.eye(6)) and irnn.rnn.nonlinearity == "relu"
    assert torch.all(irnn.rnn.bias_ih_l0 == 0)


def test_seq_model_forget_bias_and_bad_combinations():
    model = SeqModel("lstm", 2, 1, hidden=4, forget_bias=3.0)
    assert torch.all(model.rnn.bias_ih_l0[4:8] == 3.0) and torch.all(model.rnn.bias_hh_l0[4:8] == 0.0)
    with pytest.raises(ValueError, match="forget_bias"):
        SeqModel("gru", 2, 1, forget_bias=1.0)
    with pytest.raises(ValueError, match="Elman"):
        SeqModel("lstm", 2, 1, max_singular_value=0.5)


def test_simple_cells_are_gradguard_simple_rnn():
    model = SeqModel("simple-sigmoid", 2, 1, hidden=4)
    assert isinstance(model.rnn, gg.rnn.SimpleRNN) and model.rnn.nonlinearity == "sigmoid"
