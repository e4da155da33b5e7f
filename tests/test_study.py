"""`research study`: every entry trained once per seed, sources of the same seed, resumable, then the report."""

import mlflow
import pytest

from research.config import ConfigError
from research.recipes.experiment import load_config
from research.recipes.study import _with_sources, run_study, study_entries
from research.recipes.train import train_and_evaluate


def test_entries_put_the_instrument_and_every_source_before_the_methods_built_on_it():
    names = [entry.name for entry in study_entries()]
    assert names[:3] == ["unified_lora told resolved", "unified_lora told preferences", "unified_lora"]
    assert names.index("per_persona_lora") < names.index("moe_merge")
    assert names[-1] == "selective_routing"  # routes between every other LoRA run
    assert {"retrieval trained with context", "augmented_lora hybrid"} <= set(names)
    alone = [entry.name for entry in study_entries(["retrieval trained with context"])]
    assert alone == [
        "unified_lora told resolved",
        "unified_lora told preferences",
        "unified_lora",
        "retrieval trained with context",
    ]
    with pytest.raises(ConfigError, match="'magic' is not registered"):
        study_entries(["magic"])


def test_hyper_lora_brings_its_cold_start_comparators_on_the_same_held_out_personas():
    entries = {entry.name: entry for entry in study_entries(["hyper_lora"])}
    names = list(entries)
    assert names.index("unified_lora held out") < names.index("retrieval held out")
    share = "method_args.held_out=0.2"
    assert all(share in entries[f"{m} held out"].overrides for m in ("unified_lora", "retrieval", "user_embedding"))
    done = {("unified_lora", 0): "plain", ("unified_lora held out", 0): "held"}
    assert "method_args.unified_run=held" in _with_sources(entries["retrieval held out"], done, 0)
    with pytest.raises(ConfigError, match="builds on 'unified_lora held out'"):
        _with_sources(entries["retrieval held out"], {("unified_lora", 0): "plain"}, 0)


def test_selective_routing_routes_between_the_lora_runs_made_on_the_study_splits():
    (routing,) = [entry for entry in study_entries(["selective_routing"]) if entry.name == "selective_routing"]
    done = {("unified_lora", 0): "u", ("per_persona_lora", 0): "p", ("per_persona_lora", 1): "other seed"}
    done |= {("cluster_lora", 0): "c", ("hyper_lora", 0): "h"}
    assert "method_args.candidate_runs=p,c" in _with_sources(routing, done, 0)


def test_a_study_trains_each_entry_once_per_seed_and_a_second_call_reuses_them(experiment, tmp_path):
    page = run_study(experiment, ["hybrid_lora"], seeds=2, out=tmp_path / "report")
    tracking = next(o.split("=", 1)[1] for o in experiment if o.startswith("tracking.uri="))
    client = mlflow.tracking.MlflowClient(tracking)
    exp = client.get_experiment_by_name("persona-lab")

    def runs(filter_string=""):
        return client.search_runs([exp.experiment_id], filter_string)

    singles = [r for r in runs() if "aggregate" not in r.data.tags and "report" not in r.data.tags]
    assert len(singles) == 4 * 2  # told resolved, told preferences, unified, hybrid; 2 seeds each
    unified = {r.data.params["seed"]: r.info.run_id for r in singles if r.info.run_name == "unified_lora"}
    for hybrid in (r for r in singles if r.data.tags["method"] == "hybrid_lora"):
        assert hybrid.data.tags["source.unified_run"] == unified[hybrid.data.params["seed"]]
    assert len(runs("tags.aggregate = 'seeds'")) == 4
    text = page.with_suffix(".md").read_text()
    assert "**instrument**: unified_lora told resolved x2 seeds" in text and "| hybrid_lora x2 seeds (" in text

    run_study(experiment, ["hybrid_lora"], seeds=2, out=tmp_path / "again")
    assert len([r for r in runs() if "report" not in r.data.tags]) == len(singles) + 4  # nothing trained again

    # a later run of unified's config (another `make run`) does not displace the one hybrid was built on
    train_and_evaluate(load_config(None, list(experiment), "unified_lora"))
    run_study(experiment, ["hybrid_lora"], seeds=2, out=tmp_path / "third")
    assert len([r for r in runs() if "report" not in r.data.tags]) == len(singles) + 4 + 1
