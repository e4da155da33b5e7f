import time

import pytest
import torch

from research.models.base import load_base


def test_base_loads_through_auto_classes(base_dir):
    tokenizer, model = load_base(str(base_dir))
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "lights on"}], add_generation_prompt=True, return_dict=False
    )
    assert tokenizer.decode(ids) == "<|im_start|>user\nlights on<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        assert model(torch.tensor([ids])).logits.shape == (1, len(ids), len(tokenizer))


def test_persona_words_are_single_pieces_not_letters(base_dir):
    tokenizer, _ = load_base(str(base_dir))
    assert len(tokenizer("assistant")["input_ids"]) <= 2  # trained on chat-formatted text


def test_hub_name_without_network_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="cannot be reached"):
        load_base("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.perf_counter() - start < 10
