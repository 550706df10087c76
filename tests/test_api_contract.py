"""``gg.__all__`` against the public contract (``../shared/API.md`` beside the repository)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gradguard as gg

CONTRACT = Path(__file__).resolve().parents[1].parent / "shared" / "API.md"


def contract_names(text: str) -> set[str]:
    """Top-level names the contract uses: every ``gg.NAME``, and the classes it names alone in
    backticks (``ClipStats``, ``StepInfo``...), less those of a subpackage (``gg.rnn.SimpleRNN``,
    ``from gradguard.keras import ...``) and Python's constants."""
    names = set(re.findall(r"\bgg\.([A-Za-z_]\w*)", text))
    names |= set(re.findall(r"`([A-Z][A-Za-z0-9]+)`", text))
    names -= set(re.findall(r"from gradguard\.\w+ import (\w+)", text))
    names -= set(re.findall(r"\bgg\.[a-z_]\w*\.([A-Za-z_]\w*)", text))
    return names - {"None", "True", "False"}


@pytest.fixture(scope="module")
def contract() -> str:
    if not CONTRACT.is_file():
        pytest.skip(f"the API contract is not at {CONTRACT} (it lives beside the repository, in ../shared/API.md)")
    return CONTRACT.read_text(encoding="utf-8")


def test_the_contract_is_parsed_into_names(contract):
    names = contract_names(contract)
    assert {"Guard", "ClipNorm", "inspect", "locate_nonfinite", "rnn", "StepInfo", "Finding"} <= names
    assert "GuardOptimizer" not in names and "SimpleRNN" not in names  # a subpackage's, not the top level's


def test_every_name_of_the_contract_is_exported(contract):
    missing = sorted(contract_names(contract) - set(gg.__all__))
    assert not missing, f"named in API.md but not in gg.__all__: {missing}"


def test_every_exported_name_exists():
    assert len(set(gg.__all__)) == len(gg.__all__)
    assert [n for n in gg.__all__ if not hasattr(gg, n)] == []
