"""Generation backends: `hf` (transformers `generate`, batched and left-padded) and `vllm` (the model's
current weights saved to a temporary folder and loaded by `vllm.LLM`, greedy sampling). vLLM is an optional
extra; `make test-vllm` checks that both give the same greedy text on the embedded model."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.api import GenerationBackend
from harness.config import option
from harness.errors import UnlearnBenchError
from harness.hookspecs import hookimpl
from harness.measure.generation import cut_at_stop, greedy


@dataclass
class HfConfig:
    pass


class Hf(GenerationBackend):
    """transformers `generate`: greedy, batched with left padding, cut at EOS and stop strings."""

    name = "hf"
    Config = HfConfig

    def generate(self, model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                 stop: Sequence[str] = ()) -> list[str]:
        return greedy(model, tokenizer, prompts, max_new_tokens, batch_size, stop)


@dataclass
class VllmConfig:
    dtype: str = option("auto", "vLLM dtype (auto: the saved weights' dtype)")
    max_model_len: int = option(2048, "vLLM context length (prompt + new tokens)")
    gpu_memory_utilization: float = option(0.8, "fraction of GPU memory vLLM may take (the HF copy is moved "
                                                 "to the CPU while vLLM runs)")
    enforce_eager: bool = option(True, "skip CUDA-graph capture (faster start-up for one evaluation)")
    cpu_kv_cache_gb: int = option(1, "KV-cache size for CPU builds of vLLM (VLLM_CPU_KVCACHE_SPACE)")

    def validate(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


class Vllm(GenerationBackend):
    """vLLM: the weights being evaluated are saved to a temporary folder and served by `vllm.LLM`."""

    name = "vllm"
    Config = VllmConfig

    def generate(self, model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                 stop: Sequence[str] = ()) -> list[str]:
        try:
            import vllm
        except ImportError as exc:
            raise UnlearnBenchError("generation backend 'vllm' needs vLLM: `pip install 'unlearn-bench[vllm]'` "
                                    "on a GPU machine, or `make test-vllm` for the CPU build") from exc
        c = self.config
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(c.cpu_kv_cache_gb))
        device = model.device
        with tempfile.TemporaryDirectory(prefix="unlearn-bench-vllm-") as folder:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            if device.type == "cuda":  # free the GPU for vLLM's weights and KV cache
                model.to("cpu")
                torch.cuda.empty_cache()
            try:
                llm = vllm.LLM(model=folder, dtype=c.dtype, max_model_len=c.max_model_len, seed=0,
                               enforce_eager=c.enforce_eager, gpu_memory_utilization=c.gpu_memory_utilization)
                params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None)
                outputs = llm.generate(list(prompts), params, use_tqdm=False)
                texts = [out.outputs[0].text for out in outputs]
                del llm
                gc.collect()
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    model.to(device)
        return [cut_at_stop(t, stop) for t in texts]


@hookimpl
def register_generation_backends(register) -> None:
    register(Hf)
    register(Vllm)
