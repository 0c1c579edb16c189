import pytest

from harness import models
from harness.errors import ModelNotFoundError


def test_embedded_model_is_a_plain_hf_folder_and_answers(smol):
    model, tok = smol
    path = models.resolve("smollm2-135m")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    from harness.generation import greedy

    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "Paris" in greedy(model, tok, [prompt], max_new_tokens=12)[0]


def test_tiny_llama_is_well_under_a_million_parameters(tiny):
    model, tok = tiny
    assert sum(p.numel() for p in model.parameters()) < 700_000
    assert len(tok) == model.config.vocab_size and tok.pad_token_id is not None


def test_missing_model_names_the_argument_and_the_aliases(tmp_path):
    missing = r"model folder not found: .*nowhere \(aliases: smollm2-135m, smollm2-offset, tiny-llama\)"
    with pytest.raises(ModelNotFoundError, match=missing):
        models.load(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=r"cannot load model 'no-such-org/no-such-model'.*not a local folder"):
        models.load("no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError, match="dtype 'float8'"):
        models.load("tiny-llama", dtype="float8")


def test_prepare_is_cached(tmp_path):
    from harness import prepare
    from harness.plugins import get_registry
    from harness.spec import PrepareConfig

    task = get_registry().build("task", "tofu-mini", {"retain_authors": 1})
    cfg = PrepareConfig(epochs=1)
    first, _ = prepare.ensure_model(task, "tiny-llama", "retain", cfg)
    again, hit_again = prepare.ensure_model(task, "tiny-llama", "retain", cfg)
    assert again == first and hit_again
    other, _ = prepare.ensure_model(task, "tiny-llama", "retain", PrepareConfig(epochs=2))
    assert other != first  # the key hashes the fine-tuning settings
