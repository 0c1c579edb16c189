"""Greedy generation: HF batched (left-padded) against one prompt at a time, and vLLM against HF where vLLM
is installed (`make test-vllm` builds a venv with the CPU build).

    python -m benchmarks.generation [--model smollm2-135m] [--batch 16] [--tokens 48]
"""

from __future__ import annotations

import importlib.util

from benchmarks import common
from harness.measure.backends import Hf, HfConfig, Vllm, VllmConfig


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=48)
    args = p.parse_args()
    common.header("generation")
    task, model, tok = common.target_model(args.model)
    prompts = [task._example(r).prompt for split in task._eval_splits().values() for r in split][:64]
    hf = Hf(HfConfig())
    out = {}
    batched = common.median_time(lambda: out.update(b=hf.generate(model, tok, prompts, args.tokens, args.batch)), 1)
    single = common.median_time(lambda: out.update(s=hf.generate(model, tok, prompts, args.tokens, 1)), 1)
    same = sum(a == b for a, b in zip(out["b"], out["s"], strict=True))
    print(f"{len(prompts)} prompts, {args.tokens} new tokens: HF batched ({args.batch}) {batched:.1f} s, one at a "
          f"time {single:.1f} s, speed-up {single / batched:.1f}x; identical texts {same}/{len(prompts)}")
    if importlib.util.find_spec("vllm") is None:
        print("vLLM: not installed here (make test-vllm builds a venv with it)")
        return
    backend = Vllm(VllmConfig(dtype="float32", max_model_len=512))
    seconds = common.median_time(lambda: out.update(v=backend.generate(model, tok, prompts, args.tokens, 64)), 1)
    same = sum(a == b for a, b in zip(out["v"], out["s"], strict=True))
    print(f"vLLM (incl. saving the weights and starting the engine) {seconds:.1f} s, vs HF batched "
          f"{batched / seconds:.2f}x; identical texts to HF one-at-a-time {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
