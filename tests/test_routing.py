"""Registry, promotion and the routing table, and answering through it, on a real MLflow
store and real PEFT adapters."""

import json
import multiprocessing
from pathlib import Path

import mlflow
import pytest
import torch
from peft import PeftModel

from research.data.schema import DataError, read_requests
from research.datamodules.persona import chat_ids
from research.datamodules.prompts import conversation, system_text
from research.models.base import base_fingerprint, load_base
from research.modules.base import greedy_generate
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, current_context, known_users, write_predictions
from research.recipes.train import train_and_evaluate
from research.tracking.registry import RoutingError, history, load_table, promote, register, rollback, verify


@pytest.fixture
def store(source_runs):
    experiment, runs = source_runs
    cfg = load_config(None, experiment, "unified_lora")
    return cfg, runs, base_fingerprint(cfg.base_model)


def _versions(cfg, runs):
    unified = register(cfg.tracking.uri, runs["unified_lora"])
    per_persona = register(cfg.tracking.uri, runs["per_persona_lora"])
    return str(unified.version), str(per_persona.version)


def test_register_tags_the_version_and_marks_it_candidate(store):
    cfg, runs, base_fp = store
    version = register(cfg.tracking.uri, runs["per_persona_lora"])
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    assert version.name == "per_persona_lora"
    assert version.tags["base_fingerprint"] == base_fp and version.tags["dataset"]
    assert client.get_model_version_by_alias("per_persona_lora", "candidate").version == version.version


def test_register_refuses_an_unfinished_run(store):
    cfg, _, _ = store
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    run = client.create_run(mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id, tags={"method": "x"})
    with pytest.raises(RoutingError, match="only a FINISHED run"):
        register(cfg.tracking.uri, run.info.run_id)


def test_promotions_write_revisions_that_roll_back(store, tmp_path):
    cfg, runs, base_fp = store
    unified, per_persona = _versions(cfg, runs)
    first = promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", base_fp)
    assert first["fallback"]["version"] == unified and first["routes"] == {}
    second = promote(
        cfg.tracking.uri, tmp_path, "per_persona_lora", per_persona, ["persona_000", "persona_001"], base_fp
    )
    assert second["routes"]["persona_001"] == {
        "model": "per_persona_lora",
        "version": per_persona,
        "adapter": "persona_001",
    }
    assert load_table(tmp_path)["revision"] == 2 and [t["revision"] for t in history(tmp_path)] == [1, 2]
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    champion = client.get_model_version_by_alias("per_persona_lora", "champion")
    assert str(champion.version) == per_persona and "promoted.2" in champion.tags
    back = rollback(cfg.tracking.uri, tmp_path)
    assert back["revision"] == 3 and back["routes"] == {} and back["fallback"] == first["fallback"]
    assert load_table(tmp_path) == back and len(history(tmp_path)) == 3
    # the aliases follow the table: per_persona_lora serves no one any more, unified everyone
    assert "champion" not in client.get_registered_model("per_persona_lora").aliases
    assert str(client.get_registered_model("unified_lora").aliases["champion"]) == unified
    assert verify(cfg.tracking.uri, tmp_path) == []


def test_verify_names_drift_between_registry_and_table_and_fixes_it(store, tmp_path):
    cfg, runs, base_fp = store
    unified, per_persona = _versions(cfg, runs)
    promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", base_fp)
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    # a crash between the table's write and the aliases, or a hand-set alias
    client.set_registered_model_alias("per_persona_lora", "champion", per_persona)
    client.delete_registered_model_alias("unified_lora", "champion")
    assert sorted(verify(cfg.tracking.uri, tmp_path)) == [
        f"per_persona_lora: champion is version {per_persona}, routing revision 1 implies none (it routes no "
        "version of it)",
        f"unified_lora: champion is unset, routing revision 1 implies version {unified}",
    ]
    assert len(verify(cfg.tracking.uri, tmp_path, fix=True)) == 2
    assert verify(cfg.tracking.uri, tmp_path) == []
    aliases = client.get_registered_model("unified_lora").aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {"champion": unified, "candidate": unified}


def test_refused_promotions_say_why_and_leave_the_table_alone(store, tmp_path):
    cfg, runs, base_fp = store
    unified, per_persona = _versions(cfg, runs)
    promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", base_fp)
    before = (tmp_path / "table.json").read_text()
    with pytest.raises(RoutingError, match="has no version 999"):
        promote(cfg.tracking.uri, tmp_path, "unified_lora", "999", "all", base_fp)
    with pytest.raises(RoutingError, match="trained on base model"):
        promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", "another-base")
    with pytest.raises(RoutingError, match="no adapter for persona nobody"):
        promote(cfg.tracking.uri, tmp_path, "per_persona_lora", per_persona, ["persona_000", "nobody"], base_fp)
    assert (tmp_path / "table.json").read_text() == before and len(history(tmp_path)) == 1


def test_a_corrupted_table_is_detected_on_load(store, tmp_path):
    cfg, runs, base_fp = store
    unified, _ = _versions(cfg, runs)
    promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", base_fp)
    table = json.loads((tmp_path / "table.json").read_text())
    table["routes"]["persona_000"] = {"model": "x", "version": "1", "adapter": ""}  # edited by hand
    (tmp_path / "table.json").write_text(json.dumps(table))
    with pytest.raises(RoutingError, match="corrupted"):
        load_table(tmp_path)
    (tmp_path / "table.json").write_text('{"revision": 1, "rou')
    with pytest.raises(RoutingError, match="corrupted"):
        load_table(tmp_path)


def _promote_one(args):
    return promote(*args)["revision"]


def test_concurrent_promotions_serialise_into_whole_revisions(store, tmp_path):
    cfg, runs, base_fp = store
    _, per_persona = _versions(cfg, runs)
    jobs = [
        (cfg.tracking.uri, tmp_path, "per_persona_lora", per_persona, [f"persona_00{i}"], base_fp) for i in range(4)
    ]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        revisions = pool.map(_promote_one, jobs)
    assert sorted(revisions) == [1, 2, 3, 4]
    assert sorted(load_table(tmp_path)["routes"]) == [f"persona_00{i}" for i in range(4)]


def test_answers_go_through_each_personas_adapter_and_unknowns_get_the_fallback(store, tmp_path, capsys):
    cfg, runs, base_fp = store
    unified, per_persona = _versions(cfg, runs)
    promote(cfg.tracking.uri, tmp_path, "unified_lora", unified, "all", base_fp)
    promote(cfg.tracking.uri, tmp_path, "per_persona_lora", per_persona, ["persona_001"], base_fp)
    context = {"time_of_day": "evening", "weather": "rainy", "temperature_c": 8.0, "day_of_week": "Friday"}
    requests = [
        {"persona_id": persona, **context, "turns": [{"role": "user", "text": "turn on the lights"}]}
        for persona in ("persona_001", "stranger")
    ]
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, tmp_path, max_new_tokens=12)
    replies = model.answer(requests)
    assert "no route for stranger" in capsys.readouterr().err

    artifacts = mlflow.artifacts.download_artifacts(run_id=runs["per_persona_lora"], artifact_path="adapter")
    unified_dir = mlflow.artifacts.download_artifacts(run_id=runs["unified_lora"], artifact_path="adapter")
    for reply, request, adapter in zip(replies, requests, (f"{artifacts}/persona_001", unified_dir), strict=True):
        tokenizer, base = load_base(cfg.base_model)
        plain = PeftModel.from_pretrained(base, adapter).eval()
        ids = chat_ids(tokenizer, conversation(request, system_text(request)), generation_prompt=True)
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        expected = tokenizer.decode(greedy_generate(plain, tokenizer, batch, 12)[0], skip_special_tokens=True)
        assert reply == expected.strip()

    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in requests))
    write_predictions(tmp_path / "out.jsonl", read_requests(path), replies)
    assert [json.loads(line)["prediction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == replies


def test_predict_input_errors_name_the_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {
        "persona_id": "p",
        "time_of_day": "morning",
        "weather": "sunny",
        "temperature_c": 20.0,
        "day_of_week": "Monday",
    }
    rows = [
        {**good, "turns": [{"role": "user", "text": "hi"}]},
        {**good, "turns": [{"role": "assistant", "text": "hi"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"row 2, field turns\[0\].role: expected 'user'"):
        read_requests(path)


def test_prefix_static_prompts_carry_the_description_and_serving_builds_the_same(source_runs, data_root, tmp_path):
    """A method that changes prompts, not weights: its run's prompts hold each persona's
    description, its adapter's manifest says so, and serving answers with those prompts."""
    experiment, runs = source_runs
    cfg = load_config(None, experiment, "prefix_static")
    result = train_and_evaluate(cfg)
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["source.unified_run"] == runs["unified_lora"]
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    assert json.loads((adapter / "manifest.json").read_text())["context"]["description"] is True

    version = register(cfg.tracking.uri, result.run_id)
    routing = tmp_path / "routing"
    promote(cfg.tracking.uri, routing, "prefix_static", version.version, "all", base_fingerprint(cfg.base_model))
    users = known_users(data_root / "personas")
    persona = sorted(users)[0]
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, max_new_tokens=12, users=users)
    request = {"persona_id": persona, **current_context(), "turns": [{"role": "user", "text": "lights on"}]}
    answer = model.answer([request])[0]

    tokenizer, base = load_base(cfg.base_model)
    peft = PeftModel.from_pretrained(base, adapter).eval()
    system = system_text(request, name=users[persona]["name"], description=users[persona]["description"])
    assert "About the user:" in system
    ids = torch.tensor([chat_ids(tokenizer, conversation(request, system), generation_prompt=True)])
    expected = greedy_generate(peft, tokenizer, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 12)
    assert answer == tokenizer.decode(expected[0], skip_special_tokens=True).strip()
