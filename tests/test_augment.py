"""Augmentation: reworded user turns, replies unchanged, training only, deterministic."""

import random

import mlflow
import pytest
from peft import LoraConfig

from research.data.augment import Augmentation, numbers, politeness, synonyms
from research.recipes.experiment import load_config
from research.recipes.train import base_copy, train_and_evaluate


def test_rules_keep_what_is_asked():
    rng = random.Random(0)
    assert numbers("Set the lights to 70%.", rng) == "Set the lights to seventy percent."
    assert numbers("volume at forty-five percent", rng) == "volume at 45 percent"
    assert numbers("no one is home", rng) == "no one is home", "words become digits only as amounts"
    assert numbers("brightness 250", rng) == "brightness 250", "only 0-100 are written as words"
    assert numbers("make it 21.5 degrees", rng) == "make it 21.5 degrees", "decimals stay"
    assert {synonyms("Play some music.", random.Random(seed)) for seed in range(20)} <= {
        "Play some music.",
        "Play some tunes.",
    }
    assert politeness("A bit brighter, please.", rng) == "A bit brighter, please.", "never please twice"
    swapped = {synonyms("Turn on the lights", random.Random(seed)) for seed in range(20)}
    assert "Turn on the lights" in swapped and len(swapped) > 3
    assert all(s.endswith(("lights", "lamps", "lighting")) for s in swapped)
    framed = {politeness("Turn on the AC.", random.Random(seed)) for seed in range(30)}
    assert "Please, turn on the AC." in framed and "Turn on the AC, thanks." in framed


def _dialogue(i: int) -> dict:
    return {
        "dialogue_id": f"d{i}",
        "persona_id": "p",
        "time_of_day": "morning",
        "weather": "sunny",
        "temperature_c": 20.0,
        "day_of_week": "Monday",
        "turns": [
            {"role": "user", "text": f"set the lights to {i}0%"},
            {"role": "assistant", "text": f"Lights {i}0%."},
        ],
    }


def test_copies_reach_the_target_replies_unchanged_and_are_marked():
    originals = [_dialogue(i) for i in range(3)]
    extra = Augmentation(per_persona=8)(originals)
    assert len(extra) == 5 and all(e["augmented"] for e in extra)
    assert [e["dialogue_id"] for e in extra] == ["d0~aug1", "d1~aug1", "d2~aug1", "d0~aug2", "d1~aug2"]
    for e in extra:
        original = originals[int(e["dialogue_id"][1])]
        assert e["turns"][1] == original["turns"][1], "the persona's reply is unchanged"
        assert (e["time_of_day"], e["weather"]) == ("morning", "sunny"), "context kept unless asked"
    assert extra == Augmentation(per_persona=8)(originals), "deterministic"
    assert extra != Augmentation(per_persona=8, seed=1)(originals)
    assert Augmentation(per_persona=2)(originals) == []
    varied = Augmentation(per_persona=30, vary_context=True)(originals)
    assert len({(e["time_of_day"], e["weather"], e["temperature_c"]) for e in varied}) > 1
    with pytest.raises(ValueError, match="rule 'shout' is unknown"):
        Augmentation(rules=("shout",))


def test_augmented_lora_trains_on_marked_copies_of_training_dialogues_only(experiment):
    from research.datamodules.persona import PersonaDataModule
    from research.modules import METHODS

    cfg = load_config(None, [*experiment, "method_args.per_persona=9"], "augmented_lora")
    tokenizer, _ = base_copy(cfg.base_model)
    plain = PersonaDataModule(cfg.data, tokenizer)
    augmented = PersonaDataModule(cfg.data, tokenizer, augment=METHODS["augmented_lora"].needs(cfg.method_args).augment)
    assert plain.cache_path != augmented.cache_path
    for datamodule in (plain, augmented):
        datamodule.prepare_data()
        datamodule.setup()
    for split in ("val", "test"):
        assert augmented.examples[split] == plain.examples[split], "val and test hold no copy"
    extra = [e for e in augmented.examples["train"] if e.get("augmented")]
    originals = {e["dialogue_id"]: e for e in plain.examples["train"]}
    personas = {e["persona_id"] for e in originals.values()}
    assert len(augmented.examples["train"]) == 9 * len(personas)
    assert all(e["dialogue_id"].split("~")[0] in originals for e in extra), "copies of training dialogues only"
    assert not any(e.get("augmented") for e in plain.examples["train"])

    run = mlflow.get_run(train_and_evaluate(cfg).run_id)  # per-persona: no unified run is needed
    assert run.data.metrics["data/augmented_dialogues"] == len(extra) > 0
    assert run.data.metrics["data/train_dialogues"] == len(originals)
    assert "source.unified_run" not in run.data.tags


def test_hybrid_augmented_lora_builds_on_unified(source_runs):
    experiment, runs = source_runs
    cfg = load_config(None, [*experiment, "method_args.per_persona=6", "method_args.hybrid=true"], "augmented_lora")
    run = mlflow.get_run(train_and_evaluate(cfg).run_id)
    assert run.data.tags["source.unified_run"] == runs["unified_lora"]
    # each persona's export holds unified's part and its own: rank 8 + 8
    adapter = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="adapter/persona_001")
    assert LoraConfig.from_pretrained(adapter).r == 16
