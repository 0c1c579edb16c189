import pytest

from harness.errors import ModelNotFoundError
from harness.run import models


def test_embedded_model_is_a_plain_hf_folder_and_answers(smol):
    model, tok = smol
    path = models.resolve("smollm2-135m")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    from harness.measure.generation import greedy

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
    with pytest.raises(ModelNotFoundError, match=r"'no-such-org/no-such-model' not found locally.*--online"):
        models.load("no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError, match="dtype 'float8'"):
        models.load("tiny-llama", dtype="float8")


def test_prepare_is_cached(tmp_path):
    from harness.plugins import get_registry
    from harness.run import prepare
    from harness.run.spec import PrepareConfig

    task = get_registry().build("task", "tofu-mini", {"retain_authors": 1})
    cfg = PrepareConfig(epochs=1)
    first, _ = prepare.ensure_model(task, "tiny-llama", "retain", cfg)
    again, hit_again = prepare.ensure_model(task, "tiny-llama", "retain", cfg)
    assert again == first and hit_again
    other, _ = prepare.ensure_model(task, "tiny-llama", "retain", PrepareConfig(epochs=2))
    assert other != first  # the key hashes the fine-tuning settings


def test_a_typo_is_not_a_download(tmp_path, monkeypatch):
    """Offline (the default), a model string that is neither a folder, an alias nor in the hub cache fails
    naming the closest folders and aliases, instead of fetching a hub repository of that name."""
    (tmp_path / "ckpt" / "run-1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNLEARN_BENCH_ONLINE", raising=False)
    with pytest.raises(ModelNotFoundError, match=r"'ckpt/run1' not found locally.*closest: ckpt/run-1"):
        models.resolve("ckpt/run1")
    with pytest.raises(ModelNotFoundError, match=r"closest: tiny-llama"):
        models.resolve("tiny-lama")
    monkeypatch.setenv("UNLEARN_BENCH_ONLINE", "1")  # asked for: a hub id is passed on to transformers
    assert models.resolve("ckpt/run1") == "ckpt/run1"


def test_the_command_line_sets_the_hub_offline_before_it_is_imported(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: the command line sets it first (a fresh process
    shows it); `--online` asks for the hub."""
    import os
    import subprocess
    import sys

    from harness import offline

    code = ("from harness import cli; cli.main(['-q', 'verify', 'no-such-folder']); "
            "import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "UNLEARN_BENCH_ONLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"
    for name in (*offline.HUB_VARIABLES, offline.ONLINE_ENV):
        monkeypatch.setenv(name, "")  # restored after the test, whatever configure sets
    offline.configure(ask_online=True)
    assert offline.online() and all(os.environ[name] == "0" for name in offline.HUB_VARIABLES)


def test_generation_ends_on_the_models_own_end_tokens(tiny):
    from harness.measure.generation import end_tokens

    model, tok = tiny
    model.generation_config.eos_token_id = [5, 7]  # several, as Llama-3-Instruct's generation config lists
    assert end_tokens(model, tok) == [5, 7, tok.eos_token_id]  # and the EOS answers are trained to end with
    model.generation_config.eos_token_id = tok.eos_token_id
    assert end_tokens(model, tok) == tok.eos_token_id
    model.generation_config.eos_token_id = None
    assert end_tokens(model, tok) == tok.eos_token_id
