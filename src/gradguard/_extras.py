"""Lazy imports of optional dependencies, with the exact install command when one is missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from gradguard._errors import MissingDependencyError

# Which extra provides which import name; the install command in errors comes from here.
_EXTRA_OF = {
    "matplotlib": "report",
    "bokeh": "report",
    "rich": "report",
    "sklearn": "lab",
    "statsmodels": "lab",
    "lightning": "integrations",
    "transformers": "integrations",
    "tensorboard": "integrations",
    "torch.utils.tensorboard": "integrations",
    "wandb": "loggers",
    "mlflow": "loggers",
}

_PIP_NAME = {"sklearn": "scikit-learn", "torch.utils.tensorboard": "tensorboard"}


def install_command(module: str) -> str:
    extra = _EXTRA_OF.get(module)
    if extra is None:
        return f"python -m pip install {_PIP_NAME.get(module, module)}"
    return f"python -m pip install 'gradguard[{extra}]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming ``purpose`` and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency {_PIP_NAME.get(module, module)!r}, which is not installed. "
            f"Install it with: {install_command(module)}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (without keeping it imported if it cannot)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None
