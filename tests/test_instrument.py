"""The instrument's pieces: what base pretraining shows in system turns, its batches, and
the verdict on a told model."""

import json
import shutil
from types import SimpleNamespace

import polars as pl
import pytest
import torch

from research.data.domain import DEVICES
from research.data.schema import load_dataset
from research.evaluation.metrics import METRICS_VERSION
from research.models.base import RELABELED, BaseConfig, length_grouped_batches, pretraining_conversations
from research.recipes.run import ensure_data_and_base, instrument_warnings

ANCHORS = {"true_preferences": {"param_f1": 1.0, "numerical_precision": 1.0}, "metrics_version": METRICS_VERSION}


def test_the_verdict_names_each_metric_below_the_bar_and_passes_a_model_that_reads_its_prompt():
    told_badly = {"test/param_f1": 0.40, "test/numerical_precision": 0.95}
    [warning] = instrument_warnings(told_badly, ANCHORS)
    assert warning.startswith("param_f1 0.400 told the resolved settings, against 1.000")
    assert instrument_warnings({"test/param_f1": 0.93, "test/numerical_precision": 0.91}, ANCHORS) == []
    assert "unchecked" in instrument_warnings(told_badly, None)[0]


def test_anchors_scored_with_other_metrics_are_flagged_and_re_scored(data_root, base_dir, tmp_path):
    stale = {**ANCHORS, "metrics_version": METRICS_VERSION - 1}
    assert "regenerate the dataset" in instrument_warnings({"test/param_f1": 1.0}, stale)[0]
    shutil.copytree(data_root, tmp_path / "data")
    meta_path = tmp_path / "data" / "personas" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["oracle_headroom"]["metrics_version"] = METRICS_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    rows = (tmp_path / "data" / "personas" / "dialogues.parquet").read_bytes()
    ensure_data_and_base(SimpleNamespace(data=SimpleNamespace(dir=str(meta_path.parent)), base_model=str(base_dir)))
    assert json.loads(meta_path.read_text())["oracle_headroom"]["metrics_version"] == METRICS_VERSION
    assert (tmp_path / "data" / "personas" / "dialogues.parquet").read_bytes() == rows  # same rows, new anchors


def test_a_base_whose_files_differ_from_its_card_is_refused_before_anything_runs(base_dir, tmp_path):
    from research.config import ConfigError
    from research.models.base import base_fingerprint, check_base, write_card

    copy = tmp_path / "base"
    shutil.copytree(base_dir, copy)
    facts = {"fingerprint": base_fingerprint(str(copy)), "parameters": 1, "recipe": {}, "data": {"fingerprint": "d"}}
    write_card(copy, facts | {"pretraining": {"seconds": 1, "machine": "m", "threads": 2, "torch": "t"}})
    check_base(str(copy))  # as pretrained: accepted
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "65"))
    with pytest.raises(ConfigError, match=r"its files hash to \w+, its card .* says"):
        check_base(str(copy))
    with pytest.raises(ConfigError, match="not a local directory"):
        check_base(str(tmp_path / "missing"))


def test_pretraining_shows_names_settings_and_only_earlier_exchanges_of_the_same_speaker(data_root):
    personas, dialogues = load_dataset(data_root / "neutral")
    everything = pretraining_conversations(
        personas, dialogues, BaseConfig(p_name=1, p_resolved=0, p_preferences=1, p_history=1)
    )
    nothing = pretraining_conversations(
        personas, dialogues, BaseConfig(p_name=0, p_resolved=0, p_preferences=0, p_history=0)
    )
    resolved = pretraining_conversations(personas, dialogues, BaseConfig(p_resolved=1, p_preferences=0))
    ordered = dialogues.sort("persona_id", "timestamp").iter_rows(named=True)
    names = dict(zip(personas["persona_id"], personas["name"], strict=True))
    seen: dict[str, list[str]] = {}  # persona -> its exchanges so far, oldest first
    for row, told, plain, settings in zip(ordered, everything, nothing, resolved, strict=True):
        system = told[0]["content"]
        assert f"User: {names[row['persona_id']]}." in system and "User preferences: brightness" in system
        first = ", ".join(f"{a['device']} {a['parameter']} {a['value']}" for a in row["turns"][1]["actions"])
        assert f"Settings: {first}" in settings[0]["content"] and "User preferences" not in settings[0]["content"]
        assert plain[0]["content"].startswith("Context:") and "User" not in plain[0]["content"]
        earlier = seen.setdefault(row["persona_id"], [])
        if earlier:  # every quoted exchange is one of this speaker's earlier (request => reply)
            quoted = system.split("Earlier: ", 1)[1].split(" | ")
            assert 1 <= len(quoted) <= 3 and set(quoted) <= set(earlier)
        else:
            assert "Earlier:" not in system  # a speaker's first dialogue has no past
        earlier.append(f"{row['turns'][0]['text']} => {row['turns'][1]['text']}")
        assert told[1:] == plain[1:] == [{"role": t["role"], "content": t["text"]} for t in row["turns"]]


def test_relabeled_dialogues_state_and_reply_the_same_permuted_colour_and_genre_and_change_nothing_else(data_root):
    personas, dialogues = load_dataset(data_root / "neutral")
    plain = pretraining_conversations(personas, dialogues, BaseConfig(p_resolved=1))
    relabeled = pretraining_conversations(personas, dialogues, BaseConfig(p_resolved=1, p_relabel=1))
    names = {value: (device, parameter) for device, parameter in RELABELED for value in DEVICES[device][parameter]}
    seen = set()
    for before, after in zip(plain, relabeled, strict=True):
        assert [m for m in before if m["role"] == "user"] == [m for m in after if m["role"] == "user"]
        mapping, changed = {}, {"system": set(), "assistant": set()}  # read off every word that changed
        for old, new in zip(before, after, strict=True):
            old_words, new_words = old["content"].split(), new["content"].split()
            assert len(old_words) == len(new_words)
            for a, b in zip(old_words, new_words, strict=True):
                if a != b:
                    a, b = a.strip(".,!;"), b.strip(".,!;")
                    assert names[a] == names[b]  # a value becomes another of its own parameter
                    assert mapping.setdefault(a, b) == b  # the same one in the system turn and every reply
                    changed[old["role"]].add(a)
        assert changed["system"] == changed["assistant"]  # the settings stated are the ones the replies make
        assert len(set(mapping.values())) == len(mapping)  # a permutation: distinct values stay distinct
        seen |= set(mapping)
    assert {names[value] for value in seen} == set(RELABELED)  # both parameters were relabeled somewhere
    assert pretraining_conversations(personas, dialogues, BaseConfig(p_resolved=1, p_relabel=0)) == plain


def test_length_grouped_batches_hold_every_sequence_once_in_batches_of_similar_length():
    lengths = torch.randint(5, 250, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    sequences = [([0] * n, [0] * n) for n in lengths]
    batches = list(length_grouped_batches(sequences, 32, torch.Generator().manual_seed(0)))
    assert sorted(len(s) for b in batches for s, _ in b) == sorted(lengths)
    real = sum(lengths)
    padded = sum(max(len(s) for s, _ in b) * len(b) for b in batches)
    assert real / padded > 0.9  # random batches of these lengths: about half padding
    frame = pl.DataFrame({"width": [max(len(s) for s, _ in b) for b in batches]})
    assert frame["width"].n_unique() > 10  # shuffled across lengths, not one sorted pass
