import json
import time

import pytest
import torch

from research.config import ConfigError
from research.models.base import check_tokenizer_round_trip, load_base, train_tokenizer


def test_base_loads_through_auto_classes(base_dir):
    tokenizer, model = load_base(str(base_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
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


def test_loaded_tokenizer_reads_settings_as_the_model_was_trained(base_dir):
    """A number stays one pre-token, as in pretraining, so the default vocabulary's " 80" is one
    token and copying a setting from the system turn is one lookup (Qwen2Tokenizer splits digits)."""
    tokenizer, _ = load_base(str(base_dir))
    pieces = [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("brightness 80.")]
    assert pieces == ["brightness", "Ġ80", "."]


@pytest.mark.parametrize("model_type, loads_as_trained", [("llama", True), ("qwen2", False)])
def test_round_trip_check_catches_a_loader_that_rewrites_the_tokenizer(tmp_path, model_type, loads_as_trained):
    """transformers 5 loads a `qwen2` directory with Qwen2Tokenizer, whose pre-tokenizer
    splits " 80" into " ", "8", "0"; the tiny base is a Llama model for that reason."""
    texts = [f"brightness {n}, speaker volume {n // 2}" for n in range(0, 101, 5)] * 20
    tokenizer = train_tokenizer(texts, vocab_size=320)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if loads_as_trained:
        check_tokenizer_round_trip(tokenizer, tmp_path, texts[:21])
    else:
        with pytest.raises(RuntimeError, match="encodes differently"):
            check_tokenizer_round_trip(tokenizer, tmp_path, texts[:21])


def test_hub_name_without_network_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot be reached"):
        load_base("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.perf_counter() - start < 10


def test_copy_probe_scores_each_parameter_by_what_the_system_turn_states(base_dir):
    from research.evaluation.probe import copy_probe

    results = copy_probe(*load_base(str(base_dir)), speakers=6, max_new_tokens=24)
    assert set(results) == {"resolved", "preferences", "none"}
    for scores in results.values():
        assert scores["turns"] == 12 and 0.0 <= scores["param_f1"] <= 1.0
        recalls = {k: v for k, v in scores.items() if k.startswith("param_recall/")}
        assert recalls and all(0.0 <= v <= 1.0 for v in recalls.values())
        assert {k.split("/")[1].split(".")[0] for k in recalls} <= {"lights", "ac", "speaker", "tv", "lock"}
    # the same requests and references each time: only the system turn differs
    assert results["resolved"].keys() == results["preferences"].keys() == results["none"].keys()
