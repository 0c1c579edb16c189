"""vLLM and HF give the same greedy text on the embedded model (run by `make test-vllm`, which builds a venv
with vLLM; skipped where vLLM is not installed, as in `make test`)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from harness.measure.backends import Hf, HfConfig, Vllm, VllmConfig

PROMPTS = [
    "The capital of France is",
    "Question: What is 2 + 2?\nAnswer:",
    "Once upon a time, in a small village by the sea,",
    "Question: Who wrote the play Hamlet?\nAnswer:",
    "The three primary colours are",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "Question: What is the largest planet in the solar system?\nAnswer:",
]


def test_vllm_and_hf_greedy_text_match(smol):
    model, tok = smol
    hf = Hf(HfConfig()).generate(model, tok, PROMPTS, 24, batch_size=1)
    vl = Vllm(VllmConfig(dtype="float32", max_model_len=256)).generate(model, tok, PROMPTS, 24, batch_size=8)
    assert vl == hf


def test_vllm_respects_stop_strings(smol):
    model, tok = smol
    stop = ["\nQuestion:", "."]
    hf = Hf(HfConfig()).generate(model, tok, PROMPTS[:4], 32, batch_size=1, stop=stop)
    vl = Vllm(VllmConfig(dtype="float32", max_model_len=256)).generate(model, tok, PROMPTS[:4], 32, 4, stop=stop)
    assert vl == hf


def test_a_sweep_generates_with_vllm_and_records_it(tmp_path):
    """`generation: vllm` in a sweep file reaches every run: the records carry the backend and its config."""
    import json

    from harness.config import from_dict
    from harness.sweeps import sweep

    data = {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense"], "objectives": ["graddiff"],
            "seeds": [0], "generation": "vllm", "generation_config": {"dtype": "float32", "max_model_len": 512},
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1}}
    results = tmp_path / "results"
    assert sweep.run(from_dict(sweep.SweepConfig, data, "sweep"), results)["finished"] == 1
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    (run,) = [r for r in records if r["kind"] == "run"]
    assert run["spec"]["generation"] == "vllm" and run["spec"]["generation_config"]["max_model_len"] == 512
    assert run["metrics"]["forget_rouge"]["value"] is not None
