"""`gradguard inspect MODULE:FACTORY --input-shape ...`: the preflight check from the command line."""

from __future__ import annotations

import argparse
import importlib
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="one forward/backward through a model: per-layer gradient flow and findings",
        description=(
            "Build a model by calling FACTORY from an importable module (e.g. mypkg.models:make_net), feed it "
            "random normal input of --input-shape, and print the per-layer gradient-flow table and the findings."
        ),
    )
    p.add_argument("target", metavar="MODULE:FACTORY", help="importable module and a callable returning an nn.Module")
    p.add_argument("--input-shape", type=int, nargs="+", required=True, metavar="N", help="input tensor shape, batch first (e.g. 64 784)")
    p.add_argument("--classes", type=int, default=None, help="use cross-entropy against random labels in [0, classes) instead of the mean squared output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the table and findings as JSON")
    p.set_defaults(handler=run)


def load_factory(target: str):
    if ":" not in target:
        raise ValueError(f"expected MODULE:FACTORY such as 'mypkg.models:make_net', got {target!r}.")
    module_name, attr = target.split(":", 1)
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    if not hasattr(module, attr):
        from gradguard._errors import suggest

        raise ValueError(f"{module_name!r} has no attribute {attr!r}.{suggest(attr, [a for a in dir(module) if not a.startswith('_')])}")
    return getattr(module, attr)


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from torch import nn

    import gradguard as gg

    factory = load_factory(args.target)
    model = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ValueError(f"{args.target} returned {type(model).__name__}, not an nn.Module.")
    torch.manual_seed(args.seed)
    x = torch.randn(*args.input_shape)
    if args.classes:
        y = torch.randint(0, args.classes, (args.input_shape[0],))

        def closure():
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            return nn.functional.cross_entropy(out.reshape(len(y), -1), y)
    else:

        def closure():
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            return out.pow(2).mean()

    diagnosis = gg.inspect(model, closure)
    if args.json:
        print(json.dumps({"layers": diagnosis.table(), "findings": [f.to_dict() for f in diagnosis.findings], "loss": diagnosis.loss}, indent=2, default=str))
    else:
        print(diagnosis)
    return 0
