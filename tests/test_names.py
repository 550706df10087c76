"""Names without wrapper components: a layer has one name under torch.compile, DDP, DataParallel,
activation checkpointing and in a plain run."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from gradguard._names import PRIVATE_WRAPPER_COMPONENTS, clean_name, named_modules, named_parameters, unwrap


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 1))


def plain_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-rank gloo group, so DistributedDataParallel can be built on the CPU."""
    if dist.is_initialized():
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def wrappings(model: nn.Module) -> dict[str, nn.Module]:
    nested = net()
    nested[2] = torch.compile(nested[2])  # a compiled submodule: "_orig_mod" in the middle of names
    ckpt = net()
    ckpt[2] = checkpoint_wrapper(ckpt[2])
    return {
        "compile": torch.compile(model),
        "dataparallel": nn.DataParallel(model),
        "compile(dataparallel)": torch.compile(nn.DataParallel(model)),
        "dataparallel(compile)": nn.DataParallel(torch.compile(model)),
        "nested compile": nested,
        "checkpoint_wrapper": ckpt,
    }


@pytest.mark.parametrize("how", list(wrappings(net())))
def test_wrapped_models_keep_the_plain_names(how):
    model = net()
    wrapped = wrappings(model)[how]
    assert plain_names(wrapped) != plain_names(model)  # the wrapper did change the raw names
    assert [n for n, _ in named_parameters(wrapped)] == plain_names(model)
    assert [n for n, _ in named_modules(wrapped)] == [n for n, _ in model.named_modules()]


def test_parameters_are_the_same_objects_and_unwrap_finds_the_model():
    model = net()
    wrapped = torch.compile(nn.DataParallel(model))
    assert unwrap(wrapped) is model
    assert unwrap(model) is model
    assert [id(p) for _, p in named_parameters(wrapped)] == [id(p) for p in model.parameters()]


def test_ddp_prefix_is_stripped(process_group):
    model = net()
    ddp = nn.parallel.DistributedDataParallel(model)
    assert plain_names(ddp)[0].startswith("module.")
    assert [n for n, _ in named_parameters(ddp)] == plain_names(model)
    assert [n for n, _ in named_parameters(torch.compile(ddp))] == plain_names(model)


def test_a_layer_really_named_module_keeps_its_name():
    model = nn.Sequential()
    model.add_module("module", nn.Linear(2, 2))  # the user's own name, not a wrapper's
    assert [n for n, _ in named_parameters(model)] == ["module.weight", "module.bias"]
    assert clean_name("module.weight") == "module.weight"


names = st.lists(st.sampled_from(["a", "fc", "0", "module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "w_1"]), min_size=1, max_size=6)


@given(names)
def test_clean_name_drops_exactly_the_private_components(parts):
    cleaned = clean_name(".".join(parts))
    assert cleaned == ".".join(p for p in parts if p not in PRIVATE_WRAPPER_COMPONENTS)
    assert clean_name(cleaned) == cleaned  # idempotent


def guarded_step(model: nn.Module, inner: nn.Module, tmp_path, name: str):
    import gradguard as gg

    guard = gg.Guard(model, probes="business", store=tmp_path / f"{name}.sqlite")
    opt = torch.optim.SGD(inner.parameters(), lr=0.1)
    model(torch.randn(4, 4, generator=torch.Generator().manual_seed(0))).pow(2).mean().backward()
    inner[0].weight.grad[0, 0] = float("nan")  # a skipped step: its event names the parameters
    guard.step(opt)
    guard.close()
    return guard


def names_in(event) -> dict:
    """An event's kind and the module and parameter names it holds."""
    fields = event.to_dict() if hasattr(event, "to_dict") else dict(event)
    return {k: v for k, v in fields.items() if k in ("kind", "modules", "parameters", "where", "first_module")}


def test_guard_reports_the_plain_names_for_a_wrapped_model(tmp_path):
    plain_model, wrapped_inner = net(), net()
    plain = guarded_step(plain_model, plain_model, tmp_path, "plain")
    wrapped = guarded_step(nn.DataParallel(wrapped_inner), wrapped_inner, tmp_path, "wrapped")
    assert wrapped.module_names == plain.module_names == ["0", "2.0", "3"]
    assert wrapped.model is wrapped_inner and wrapped.name == "Sequential"
    data, reference = wrapped.run_data(), plain.run_data()
    assert sorted(data.records) == sorted(reference.records)
    for metric, entries in reference.records.items():
        assert [sorted(v) for _, v in data.records[metric]] == [sorted(v) for _, v in entries], metric
    assert [names_in(e) for e in data.events] == [names_in(e) for e in reference.events]
    assert [(f.code, f.where) for f in wrapped.findings()] == [(f.code, f.where) for f in plain.findings()]


def test_guard_module_names_are_the_same_under_torch_compile():
    import gradguard as gg

    plain, compiled = gg.Guard(net()), gg.Guard(torch.compile(net()))  # no forward: nothing is compiled
    assert compiled.module_names == plain.module_names and compiled.name == plain.name
    plain.close()
    compiled.close()


def test_inspect_and_locate_name_layers_without_the_wrapper_prefix():
    """gg.inspect and gg.locate_nonfinite unwrap as Guard does: DataParallel's 'module.' is gone."""
    import gradguard as gg

    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    wrapped = nn.DataParallel(inner)
    x = torch.randn(8, 4)
    diagnosis = gg.inspect(wrapped, lambda: wrapped(x).pow(2).mean())
    assert [row.name for row in diagnosis.layers][:1] == ["0"]
    finding = gg.locate_nonfinite(wrapped, lambda: wrapped(x).log().mean())  # log of negatives
    assert finding is not None and not finding.where[0].startswith("module.")
