"""`gradguard inspect MODULE:FACTORY --input-shape ...`: the preflight check from the command line.

Exit code: 0, or 1 when a finding is at or above ``--fail-on`` (default "error", so a CI step
fails on an ERROR finding; "never" always exits 0), or 2 for a usage error, including a factory,
module or forward pass of the user's that raises (the message names the line).
"""

from __future__ import annotations

import argparse
import importlib
import inspect as pyinspect
import sys

from gradguard._cli import UsageError, one_line, raised
from gradguard._finding import SEVERITIES  # imports neither torch nor numpy


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1, got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="one forward/backward through a model: per-layer gradient flow and findings",
        description=(
            "Build a model by calling FACTORY from an importable module (e.g. mypkg.models:make_net), feed it "
            "random normal input of --input-shape, and print the per-layer gradient-flow table and the findings. "
            "Exit code 1 when a finding is at or above --fail-on (default: error), for use in CI."
        ),
    )
    p.add_argument("target", metavar="MODULE:FACTORY", help="importable module and a callable returning an nn.Module (called with no arguments)")
    p.add_argument("--input-shape", type=_positive_int, nargs="+", required=True, metavar="N", help="input tensor shape, batch first (e.g. 64 784)")
    p.add_argument("--classes", type=_positive_int, default=None, help="use cross-entropy against random labels in [0, classes) instead of the mean squared output")
    p.add_argument("--seed", type=int, default=0, help="seeds torch before FACTORY is called, so the model's initialisation is reproducible (default 0)")
    p.add_argument("--fail-on", choices=(*SEVERITIES, "never"), default="error", help="exit 1 when a finding has this severity or a higher one (default: error; never: always exit 0)")
    p.add_argument("--json", action="store_true", help="print the table and findings as JSON")
    p.set_defaults(handler=run)


def load_factory(target: str):
    if ":" not in target:
        raise UsageError(f"expected MODULE:FACTORY such as 'mypkg.models:make_net', got {target!r}.")
    module_name, attr = target.split(":", 1)
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:FACTORY such as 'mypkg.models:make_net', got {target!r}.")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(f"cannot import {module_name!r}: no such module on the path (run from the folder that holds it, or set PYTHONPATH).") from None
        raise raised(f"importing {module_name!r}", exc) from None
    except Exception as exc:  # noqa: BLE001 - the user's module has a syntax error or raises on import
        raise raised(f"importing {module_name!r}", exc) from None
    if not hasattr(module, attr):
        from gradguard._errors import suggest

        raise UsageError(f"{module_name!r} has no attribute {attr!r}.{suggest(attr, [a for a in dir(module) if not a.startswith('_')])}")
    return getattr(module, attr)


def build_model(target: str, factory):
    from torch import nn

    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise UsageError(f"{target} is an object of type {type(factory).__name__}, not a function or class that returns an nn.Module.")
    try:
        signature = pyinspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [p.name for p in signature.parameters.values() if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if required:
            raise UsageError(
                f"{target} needs arguments ({', '.join(required)}), but inspect calls it with none: "
                f"point at a function without required arguments, e.g. def make(): return {target.split(':', 1)[1]}(...)."
            )
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - whatever the user's factory raises, reported in one line
        raise raised(target, exc) from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{target} returned {type(model).__name__}, not an nn.Module.")
    return model


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from torch import nn

    import gradguard as gg

    factory = load_factory(args.target)
    torch.manual_seed(args.seed)  # before the factory: it initialises the weights
    model = build_model(args.target, factory)
    shape = tuple(args.input_shape)
    x = torch.randn(*shape)
    y = torch.randint(0, args.classes, (shape[0],)) if args.classes is not None else None

    def forward():
        try:
            out = model(x)
        except Exception as exc:  # noqa: BLE001 - whatever the user's forward raises, reported in one line
            error = raised(f"the forward pass of {args.target} on input of shape {list(shape)}", exc)
            raise UsageError(f"{error}; check --input-shape (batch first) against what the model expects.") from None
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise UsageError(f"the forward pass of {args.target} returned {type(out).__name__}, not a floating-point tensor (or a tuple starting with one).")
        return out

    def closure():
        out = forward()
        if y is None:
            return out.pow(2).mean()
        if out.numel() % len(y):
            raise UsageError(f"--classes needs one row of scores per sample, but the output of shape {list(out.shape)} does not split into {len(y)} rows (the batch size).")
        scores = out.reshape(len(y), -1)
        if args.classes > scores.shape[1]:
            raise UsageError(f"--classes {args.classes} exceeds the {scores.shape[1]} outputs per sample of {args.target}: pass --classes {scores.shape[1]} or fewer.")
        return nn.functional.cross_entropy(scores, y)

    diagnosis = gg.inspect(model, closure)
    if args.json:
        print(json.dumps({"layers": diagnosis.table(), "findings": [f.to_dict() for f in diagnosis.findings], "loss": diagnosis.loss}, indent=2, default=str))
    else:
        print(diagnosis)
    if args.fail_on == "never":
        return 0
    level = SEVERITIES.index(args.fail_on)
    failing = [f for f in diagnosis.findings if SEVERITIES.index(f.severity) >= level]
    if failing:
        codes = ", ".join(sorted({f.code for f in failing}))
        print(one_line(f"gradguard inspect: {len(failing)} finding(s) at severity {args.fail_on} or above ({codes}); exit code 1 (--fail-on {args.fail_on}; --fail-on never to always exit 0)."), file=sys.stderr)
        return 1
    return 0
