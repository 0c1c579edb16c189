"""Generation backends, over the registry: same interface, input order kept, stop strings cut; HF batched
generation gives the same greedy text as one prompt at a time."""

from __future__ import annotations

import importlib.util

import pytest

from harness.errors import UnlearnBenchError
from harness.plugins import get_registry, reset_registry

reset_registry()
BACKENDS = get_registry().names("backend")
PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Hi", "A longer prompt that needs left padding here:"]


def test_builtin_backends_are_registered():
    assert {"hf", "vllm"} <= set(BACKENDS)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract(name, tiny):
    model, tok = tiny
    backend = get_registry().build("backend", name, {})
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        with pytest.raises(UnlearnBenchError, match=r"pip install 'unlearn-bench\[vllm\]'"):
            backend.generate(model, tok, PROMPTS, 4, 2)
        return
    out = backend.generate(model, tok, PROMPTS, 6, 2)
    assert isinstance(out, list) and len(out) == len(PROMPTS) and all(isinstance(t, str) for t in out)
    reversed_out = backend.generate(model, tok, PROMPTS[::-1], 6, 2)
    assert reversed_out == out[::-1]  # input order, whatever the batching
    cuttable = [t for t in out if len(t) >= 2]
    assert cuttable, f"no generation to cut a stop string from: {out}"
    stop = cuttable[0][1]  # a string that occurs in a generation, so the cut is always exercised
    cut = backend.generate(model, tok, PROMPTS, 6, 2, stop=[stop])
    assert cut == [t.split(stop)[0].strip() for t in out]


def test_hf_batched_equals_one_at_a_time(smol):
    model, tok = smol
    backend = get_registry().build("backend", "hf", {})
    assert backend.generate(model, tok, PROMPTS, 12, 3) == backend.generate(model, tok, PROMPTS, 12, 1)
