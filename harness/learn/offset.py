"""δ-unlearning / offset unlearning (Huang et al. 2024, "Offset Unlearning for Large Language Models", arXiv
2404.11045): the large model is a black box; a small model sharing its tokenizer is unlearned instead, and the
large model's logits are shifted by the small pair's difference,

    logits(x) = L(x) + α·(S_unlearned(x) − S_original(x)),

for teacher-forced scoring and for greedy generation alike, so every task evaluates the composed model
through its own code. Only the small model is trained (its attribution, mask, objective and update rule are
the run's); the large model's weights are only read.

A run with `offset: {enabled: true, small_model: ...}` fine-tunes the small model on the task as the target
is (`prepare`), unlearns it, and evaluates `OffsetModel(large target, small unlearned, small original)`;
matched forgetting probes the composed model against the large retain model's level. On CPU the black box is
SmolLM2-135M and the pair the `smollm2-offset` alias (≈3.2M parameters, SmolLM2's tokenizer); the paper's
setting (a 13B black box, a 7B pair) is `experiments/tofu-forget10-llama2-offset.yaml`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from harness.run.features import OffsetConfig


class OffsetModel(torch.nn.Module):
    """L + α·(S_u − S_o) as a causal LM: `forward` returns an object with `.logits`, `generate` is greedy
    decoding (what the harness generates with) with each model's own KV cache and left-padding positions as
    HF `generate` computes them."""

    def __init__(self, large, small, small_original, alpha: float) -> None:
        super().__init__()
        sizes = {m.config.vocab_size for m in (large, small, small_original)}
        if len(sizes) != 1:
            raise ValueError(f"offset unlearning needs one vocabulary for the three models, got sizes {sizes}")
        self.large, self.small, self.small_original, self.alpha = large, small, small_original, alpha
        self.config = large.config

    @property
    def device(self) -> torch.device:
        return self.large.device

    def _combine(self, outputs) -> torch.Tensor:
        large, small, original = (o.logits.float() for o in outputs)
        return large + self.alpha * (small.to(large.device) - original.to(large.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        outputs = [m(input_ids=input_ids.to(m.device),
                     attention_mask=None if attention_mask is None else attention_mask.to(m.device), **kwargs)
                   for m in (self.large, self.small, self.small_original)]
        return SimpleNamespace(logits=self._combine(outputs))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 pad_token_id: int, eos_token_id: int, do_sample: bool = False, **_: object) -> torch.Tensor:
        """Greedy continuations of the (left-padded) batch: prompt + new tokens, pad after each EOS."""
        if do_sample:
            raise ValueError("the offset model generates greedily only")
        models = (self.large, self.small, self.small_original)
        names = [_cache_name(m) for m in models]
        ids, mask = input_ids, attention_mask
        caches: list[object | None] = [None] * 3
        step_ids, done = ids, torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            outputs = []
            for k, m in enumerate(models):
                out = m(input_ids=step_ids.to(m.device), attention_mask=mask.to(m.device),
                        position_ids=positions.to(m.device), use_cache=True, **{names[k]: caches[k]})
                caches[k] = getattr(out, names[k])
                outputs.append(SimpleNamespace(logits=out.logits[:, -1:]))
            token = self._combine(outputs)[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            done |= token == eos_token_id
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
            step_ids = token[:, None]
            if bool(done.all()):
                break
        return ids

    def eval(self):  # the three models' modes follow the composition's
        for m in (self.large, self.small, self.small_original):
            m.eval()
        return self


def _cache_name(model) -> str:
    """The KV-cache argument (and output field) of a model's forward: `cache` in transformers 5.20 and later,
    `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Composer:
    """The run's composition: the large model and the small original loaded once, frozen, in eval mode;
    `around(small)` is the composed model for the small model as it is now."""

    def __init__(self, cfg: OffsetConfig, large: str, small_original: str, tokenizer, dtype: str, device: str) -> None:
        from harness.run import models

        self.cfg = cfg
        self.large, large_tok = models.load(large, dtype, device)
        self.original = models.load(small_original, dtype, device)[0]
        if large_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"offset unlearning: the small model {cfg.small_model!r} does not share the large "
                             f"model's tokenizer ({large})")
        for m in (self.large, self.original):
            m.eval().requires_grad_(False)

    def around(self, small) -> OffsetModel:
        return OffsetModel(self.large, small, self.original, self.cfg.alpha)
