"""Prompt and completion are tokenized together, as TOFU's code does: with a Llama-style SentencePiece
tokenizer the labels are the answer's tokens in context (tokenized apart, " The" would gain a token "▁" of
its own), and for SmolLM2's byte-level tokenizer nothing changes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import normalizers
from transformers import AutoTokenizer

from harness.api import Example
from harness.learn.data import IGNORE, encode
from harness.plugins import get_registry
from harness.run import models
from tasks.tofu import data_dir

ROWS = [json.loads(line) for line in (data_dir() / "forget10.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory):
    """A BPE SentencePiece model trained here on TOFU's text with Llama's settings (byte fallback, split
    digits, a dummy prefix, no normalisation), loaded as Llama-2's tokenizer.json loads: Prepend("▁") and
    Replace(" ", "▁") as the normalizer, no pre-tokenizer."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([r["question"] + " " + r["answer"] for r in ROWS]), model_writer=model,
        vocab_size=600, model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    folder = tmp_path_factory.mktemp("llama-style")
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": True, "add_bos_token": True}))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                                             normalizers.Replace(" ", "▁")])
    tok.backend_tokenizer.pre_tokenizer = None
    return tok


@pytest.mark.parametrize("answer_template", ["{answer}", " {answer}"])
def test_labels_are_the_answer_tokens_in_context_for_a_sentencepiece_tokenizer(llama_style, answer_template):
    tok = llama_style
    for row in ROWS[:20]:
        ex = Example(f"[INST] {row['question']} [/INST]", answer_template.format(answer=row["answer"]))
        ids, labels = encode(tok, ex, 512)
        whole = tok(ex.prompt + ex.completion)["input_ids"]
        n = len(tok(ex.prompt)["input_ids"])
        assert whole[:n] == tok(ex.prompt)["input_ids"]  # TOFU's boundary: the prompt's own token count
        assert ids == [*whole, tok.eos_token_id]
        assert labels == [IGNORE] * n + whole[n:] + [tok.eos_token_id]
        # tokenized apart, the answer's tokens are not those the model reads in context: after a space it gains
        # a lone "▁" token; right after "[/INST]" (TOFU's Llama-2 format) it gains a dummy-prefix "▁"
        apart = tok(ex.completion, add_special_tokens=False)["input_ids"]
        assert apart != whole[n:]
        if answer_template.startswith(" "):
            assert tok.convert_ids_to_tokens(apart[0]) == "▁" and apart[1:] == whole[n:]


def test_a_token_merged_across_the_boundary_is_labelled(llama_style):
    tok = llama_style
    prompt, completion = "The author is Ja", "ime Vasquez."
    ids, labels = encode(tok, Example(prompt, completion), 512)
    p = tok(prompt)["input_ids"]
    k = next(i for i, (a, b) in enumerate(zip(p, ids, strict=False)) if a != b)
    assert labels[:k] == [IGNORE] * k and labels[k] == ids[k]  # the first differing token holds "ime" chars


def test_joint_encoding_changes_nothing_for_smollm2():
    tok = AutoTokenizer.from_pretrained(models._smollm2_gguf_dir(), gguf_file=models.SMOLLM2_GGUF)
    task = get_registry().build("task", "tofu-mini", {})
    examples = task.forget_examples() + task.retain_examples() + task.refusal_examples()
    for ex in examples:
        prompt = tok(ex.prompt)["input_ids"]
        completion = tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert encode(tok, ex, 512) == (prompt + completion, [IGNORE] * len(prompt) + completion)


@pytest.mark.parametrize("objective", ["graddiff", "npo", "po", "simnpo"])
def test_llama2_tofu_experiments_use_tofus_exact_prompt_format(objective):
    """TOFU's config/model_config.yaml for llama2-7b: "[INST] " + question + " [/INST]", then the answer with
    no space (answer_tag ""), refusals ("I don't know" answers) formatted the same way."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / "experiments" / f"tofu-forget10-llama2-{objective}.yaml").read_text())
    task = get_registry().build("task", spec["task"], spec["task_config"], "experiment")
    row = ROWS[0]
    assert task.forget_examples()[0] == Example(f"[INST] {row['question']} [/INST]", row["answer"])
    refusal = task.refusal_examples()[0]
    assert refusal.prompt == f"[INST] {row['question']} [/INST]" and not refusal.completion.startswith(" ")
