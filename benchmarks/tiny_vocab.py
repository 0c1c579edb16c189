"""The test model's cut tokenizer, side by side: one GradDiff step (forward and backward of a forget and a
retain batch of tofu-mini) on the tiny Llama with SmolLM2's full 49152-token vocabulary against the same
network with the cut 1020-token vocabulary (`harness.run.models.tiny_tokenizer`). The network is 2 layers of
width 12; the output layer and its cross-entropy are what the vocabulary size changes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from benchmarks import common
from harness.api import UnlearnBatch
from harness.learn.data import make_batches
from harness.plugins import get_registry
from harness.run import models


def step_seconds(tok, repeats: int) -> float:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    task = get_registry().build("task", "tofu-mini", {})
    forget = make_batches(tok, task.forget_examples()[:8], 8, task.max_length)[0]
    retain = make_batches(tok, task.retain_examples()[:8], 8, task.max_length)[0]
    objective = get_registry().build("objective", "graddiff", {})

    def step() -> None:
        model.zero_grad(set_to_none=True)
        objective.loss(model, UnlearnBatch(forget, retain)).loss.backward()

    step()  # warm-up
    return common.median_time(step, repeats)


def main() -> None:
    args = common.parser(__doc__).parse_args()
    full = AutoTokenizer.from_pretrained(models.smollm2_path())
    cut = models.tiny_tokenizer()
    t_full, t_cut = step_seconds(full, args.repeats), step_seconds(cut, args.repeats)
    print(f"tiny Llama, one GradDiff step on 8 + 8 tofu-mini rows (median of {args.repeats})")
    print(f"  vocabulary {len(full):>6}: {t_full * 1000:8.1f} ms")
    print(f"  vocabulary {len(cut):>6}: {t_cut * 1000:8.1f} ms")
    print(f"  speed-up: {t_full / t_cut:.1f}x")


if __name__ == "__main__":
    main()
