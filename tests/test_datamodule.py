import hypothesis
import polars as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from research.config import DataConfig
from research.datamodules.persona import PersonaDataModule
from research.models.base import load_base


def _datamodule(data_root, base_dir, tmp_path, **kwargs):
    tokenizer, _ = load_base(str(base_dir))
    cfg = DataConfig(dir=str(data_root / "personas"), cache_dir=str(tmp_path / "cache"), **kwargs)
    dm = PersonaDataModule(cfg, tokenizer, batch_size=4)
    dm.prepare_data()
    dm.setup()
    return dm, tokenizer


def test_loss_only_on_assistant_tokens(data_root, base_dir, tmp_path):
    dm, tokenizer = _datamodule(data_root, base_dir, tmp_path)
    dialogues = pl.read_parquet(data_root / "personas" / "dialogues.parquet")
    example = dm.examples["train"][0]
    turns = dialogues.filter(pl.col("dialogue_id") == example["dialogue_id"])["turns"][0]
    replies = [t["text"] for t in turns if t["role"] == "assistant"]
    learned = tokenizer.decode([t for t in example["labels"] if t != -100])
    assert learned == "<|im_end|>".join(replies) + "<|im_end|>"
    assert "Context:" not in learned and turns[0]["text"] not in learned


def test_eval_prompts_hold_the_history_and_ask_for_the_next_reply(data_root, base_dir, tmp_path):
    dm, tokenizer = _datamodule(data_root, base_dir, tmp_path)
    turns = dm.eval_turns("test")
    last = turns.filter(turns["turn"] == 1).row(0, named=True)
    prompt = tokenizer.decode(last["prompt_ids"])
    assert prompt.startswith("<|im_start|>system\nContext:") and prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant") == 2  # the first reply is history
    assert last["reference"] not in prompt


def test_no_test_dialogue_reaches_training(data_root, base_dir, tmp_path):
    dm, _ = _datamodule(data_root, base_dir, tmp_path)
    train = {e["dialogue_id"] for e in dm.examples["train"]}
    held_out = {e["dialogue_id"] for e in dm.examples["val"] + dm.examples["test"]}
    assert train and held_out and not train & held_out
    loaded = set()
    for batch in dm.train_dataloader():
        loaded |= set(batch["persona_idx"].tolist())
    assert loaded == set(range(len(dm.persona_ids)))


def test_batches_carry_persona_and_group(data_root, base_dir, tmp_path):
    dm, _ = _datamodule(data_root, base_dir, tmp_path)
    dm.group_of = {p: i % 2 for i, p in enumerate(dm.persona_ids)}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "persona_idx", "group_idx", "dialogue_id"}
    assert batch["group_idx"].tolist() == [i % 2 for i in batch["persona_idx"].tolist()]


def test_cache_is_reused_and_keyed_by_settings(data_root, base_dir, tmp_path):
    dm, _ = _datamodule(data_root, base_dir, tmp_path)
    stamp = dm.cache_path.stat().st_mtime_ns
    again, _ = _datamodule(data_root, base_dir, tmp_path)
    assert again.cache_path == dm.cache_path and again.cache_path.stat().st_mtime_ns == stamp
    oracle, tokenizer = _datamodule(data_root, base_dir, tmp_path, oracle="preferences")
    assert oracle.cache_path != dm.cache_path
    assert "User preferences: brightness" in tokenizer.decode(oracle.examples["train"][0]["input_ids"])


def test_a_perfect_reader_of_the_resolved_settings_scores_one(data_root, base_dir, tmp_path):
    """data.oracle=resolved states each reply's settings; replying with exactly what the
    system turn states (the k-th group for the k-th reply) gets every setting right."""
    import random
    import re

    from research.data.simulator.personas import make_persona
    from research.data.simulator.wording import render_reply
    from research.evaluation.generation import score

    dm, tokenizer = _datamodule(data_root, base_dir, tmp_path, oracle="resolved")
    turns = dm.eval_turns("test")
    speaker = make_persona(random.Random(0), "reader")
    replies = []
    for prompt, turn in zip(turns["prompt_ids"].to_list(), turns["turn"].to_list(), strict=True):
        stated = re.search(r"Settings: (.*?)\.<\|im_end\|>", tokenizer.decode(prompt)).group(1)
        groups = [] if stated == "none" else stated.split("; then ")
        # a follow-up that sets nothing ("thanks") has no group: the reader answers without settings
        group = groups[turn] if turn < len(groups) else ""
        actions = [tuple(setting.split(" ", 2)) for setting in group.split(", ") if setting]
        replies.append(render_reply(random.Random(turn), speaker, actions))
    _, _, overall = score(turns.drop("prompt_ids").with_columns(prediction=pl.Series(replies)))
    assert overall["param_f1"] == 1.0 and overall["numerical_precision"] == 1.0


def _old_system_text(dialogue: dict) -> str:
    """The system turn before the context hook and the user's name (pinned, not imported)."""
    return (
        f"Context: {dialogue['time_of_day']}, {dialogue['weather']}, "
        f"{dialogue['temperature_c']:.0f}°C, {dialogue['day_of_week']}."
    )


def test_default_prompt_names_the_user_and_without_it_is_the_old_prompt_token_for_token(data_root, base_dir, tmp_path):
    import polars as pl

    from research.datamodules.persona import encode_conversation
    from research.datamodules.prompts import conversation

    named, tokenizer = _datamodule(data_root, base_dir, tmp_path)
    plain, _ = _datamodule(data_root, base_dir, tmp_path, user_name=False)
    personas = pl.read_parquet(data_root / "personas" / "personas.parquet")
    dialogues = pl.read_parquet(data_root / "personas" / "dialogues.parquet")
    names = dict(zip(personas["persona_id"], personas["name"], strict=True))
    rows = {row["dialogue_id"]: row for row in dialogues.iter_rows(named=True)}
    for example in plain.examples["train"]:
        ids, labels, _ = encode_conversation(
            tokenizer, conversation(rows[example["dialogue_id"]], _old_system_text(rows[example["dialogue_id"]]))
        )
        assert example["input_ids"] == ids[:256] and example["labels"] == labels[:256]
    example = named.examples["test"][0]
    name = names[example["persona_id"]]
    assert tokenizer.decode(example["turns"][0][0]).startswith(
        f"<|im_start|>system\n{_old_system_text(rows[example['dialogue_id']])} User: {name}.<|im_end|>"
    )


class _TurnContext:
    """A provider that tells each evaluated turn its own number (as retrieval would)."""

    def system(self, dialogue, user, turn):
        return f"Context: turn {turn}."

    def fingerprint(self):
        return "turn-context"


def test_a_context_provider_shapes_training_and_each_eval_prompt_and_keys_the_cache(data_root, base_dir, tmp_path):
    tokenizer, _ = load_base(str(base_dir))
    cfg = DataConfig(dir=str(data_root / "personas"), cache_dir=str(tmp_path / "cache"))
    default = PersonaDataModule(cfg, tokenizer)
    dm = PersonaDataModule(cfg, tokenizer, context=_TurnContext())
    assert dm.cache_path != default.cache_path
    dm.prepare_data()
    dm.setup()
    assert tokenizer.decode(dm.examples["train"][0]["input_ids"]).startswith("<|im_start|>system\nContext: turn None.")
    turns = dm.eval_turns("val")
    for row in turns.iter_rows(named=True):
        prompt = tokenizer.decode(row["prompt_ids"])
        assert prompt.startswith(f"<|im_start|>system\nContext: turn {row['turn']}.")
        assert prompt.endswith("<|im_start|>assistant\n")


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=900),
    batch_size=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
@hypothesis.example(lengths=[1, 1, 1, 2], batch_size=3, seed=390)  # a short last batch: a random order pads less
def test_length_grouped_batches_are_a_permutation_with_less_padding_and_whole_batches(lengths, batch_size, seed):
    from research.datamodules.persona import LengthGroupedSampler

    sampler = LengthGroupedSampler(lengths, batch_size, torch.Generator().manual_seed(seed))
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))  # every row once per epoch
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # the loader's batches are the sampler's: only the last may be short, and each is one length group
    assert all(len(b) == batch_size for b in batches[:-1])
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()

    def padded(sequence):
        return sum(max(lengths[i] for i in sequence[k : k + batch_size]) * len(sequence[k : k + batch_size])
                   for k in range(0, len(sequence), batch_size))  # fmt: skip

    # Sorted runs of whole batches pad least; a short last batch (the shortest rows, kept last) can
    # let a random order pad less (lengths 1, 1, 1, 2 in batches of 3), and so can megabatches
    if len(lengths) % batch_size == 0 and len(lengths) <= batch_size * LengthGroupedSampler.MEGABATCH:
        assert padded(order) <= padded(shuffled)
    assert list(LengthGroupedSampler(lengths, batch_size, torch.Generator().manual_seed(seed))) == order
