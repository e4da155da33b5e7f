"""hyper_lora on the tiny base: held-out personas never reach a training or val batch, their
profile alone gives them a PEFT adapter that computes what the hypernetwork does, and the
run's adapters serve them as evaluated."""

import json
from pathlib import Path

import lightning.pytorch as L
import mlflow
import pytest
import torch
from conftest import evaluated_requests, overrides
from peft import PeftModel

from research.datamodules.persona import PersonaDataModule
from research.evaluation.statistics import StatisticsError
from research.models.base import base_fingerprint, load_base
from research.modules.group_lora import write_adapter
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, known_users
from research.recipes.train import build_module, train_and_evaluate
from research.tracking.registry import promote, register

SMALL = ["method_args.held_out=0.34", "method_args.code_size=8"]  # 2 of the 6 personas held out


def test_an_unseen_profile_gets_a_loadable_peft_adapter_computing_what_the_hypernetwork_does(experiment, tmp_path):
    cfg = load_config(None, [*experiment, *SMALL], "hyper_lora")
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    module, provided = build_module(cfg, model, tokenizer, datamodule)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a hypernetwork that sets personas apart (G starts at zero)
        for name, p in module.named_parameters():
            if "generator" in name or "encoder" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    module.eval()
    # profiles are standardised with the training personas' statistics alone
    trained = torch.tensor([p not in provided.held_out for p in module.persona_ids])
    torch.testing.assert_close(module.feature_mean, module.features[trained].mean(0))

    unseen = sorted(provided.held_out)[0]
    index = module.persona_ids.index(unseen)
    brand_new = module.features.mean(0) + 0.5 * torch.randn(module.features.shape[1], generator=generator)
    example = next(e for e in datamodule.examples["test"] if e["persona_id"] == unseen)
    batch = datamodule._collate([example])
    for name, features in ((unseen, module.features[index]), ("brand_new", brand_new)):
        write_adapter(module.persona_adapter(features), tmp_path / name, module.base_name)  # no training step
        plain = PeftModel.from_pretrained(load_base(cfg.base_model)[1], tmp_path / name).eval()
        with torch.no_grad():
            module.codes.codes, module.codes.inverse = module.code(features[None]), torch.zeros(1, dtype=torch.long)
            expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            got = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    own, new = module.persona_adapter(module.features[index]), module.persona_adapter(brand_new)
    assert any(not torch.equal(own[name][1], new[name][1]) for name in own)  # two profiles, two adapters


class SeenPersonas(L.Callback):
    """Every persona whose dialogue reaches a training or val batch."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"train": set(), "val": set()}

    def _record(self, stage, module, batch) -> None:
        self.seen[stage] |= {module.persona_ids[i] for i in batch["persona_idx"].tolist()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._record("train", module, batch)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record("val", module, batch)


@pytest.fixture(scope="module")
def hyper_experiment(data_root, base_dir, tmp_path_factory):
    return overrides(data_root, base_dir, tmp_path_factory.mktemp("hyper_lora"))


@pytest.fixture(scope="module")
def hyper_run(hyper_experiment):
    cfg = load_config(None, [*hyper_experiment, *SMALL, "train.lr=3e-3"], "hyper_lora")
    seen = SeenPersonas()
    return cfg, train_and_evaluate(cfg, callbacks=[seen]), seen.seen


def test_held_out_personas_never_reach_training_and_are_scored_apart(hyper_run):
    cfg, result, seen = hyper_run
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="held_out_personas.json")
    held_out = set(json.loads(Path(path).read_text())["personas"])
    assert len(held_out) == 2
    assert seen["train"] and seen["val"] and not (seen["train"] | seen["val"]) & held_out
    assert len(seen["train"]) == 4  # every other persona trains
    assert {"held_out/test/embedding_similarity", "held_out/test/param_f1"} <= run.data.metrics.keys()
    assert run.data.tags["splits"].endswith(",held_out=0.34")  # the split is part of the lineage


def test_held_out_personas_are_served_through_their_generated_adapters_as_evaluated(hyper_run, data_root, tmp_path):
    cfg, result, _ = hyper_run
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="held_out_personas.json")
    held_out = sorted(json.loads(Path(path).read_text())["personas"])
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    PeftModel.from_pretrained(load_base(cfg.base_model)[1], adapter / held_out[0])  # a standard PEFT LoRA
    routing = tmp_path / "routing"
    version = register(cfg.tracking.uri, result.run_id).version
    table = promote(cfg.tracking.uri, routing, "hyper_lora", version, "all", base_fingerprint(cfg.base_model))
    users = known_users(data_root / "personas")
    assert set(table["routes"]) == set(users)  # held-out personas included
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, cfg.eval.max_new_tokens, users)
    trained = sorted(set(users) - set(held_out))[:1]
    requests, expected = evaluated_requests(cfg, result.run_id, [*held_out, *trained])
    assert all(expected) and model.answer(requests) == expected


def test_held_out_personas_are_compared_apart_against_unified_with_the_same_share(
    hyper_run, hyper_experiment, tmp_path, capsys
):
    from research.cli import main
    from research.config import ConfigError
    from research.recipes.analysis import compare_runs
    from research.recipes.report import build_report

    cfg, hyper, _ = hyper_run
    plain = train_and_evaluate(load_config(None, hyper_experiment, "unified_lora")).run_id
    held = train_and_evaluate(load_config(None, [*hyper_experiment, SMALL[0]], "unified_lora")).run_id
    split = ["--split", "held_out/test", "--metric", "param_f1", "--against", held]
    main(["compare", hyper.run_id, *split, "--overrides", f"tracking.uri={cfg.tracking.uri}"])
    assert "held_out/test/param_f1" in capsys.readouterr().out
    rows = compare_runs(cfg.tracking, [hyper.run_id], held, "param_f1", "held_out/test")
    assert rows[0][1]["personas"] == 2  # the held-out ones only
    with pytest.raises(StatisticsError, match="differ in splits"):  # not against the plain unified
        compare_runs(cfg.tracking, [hyper.run_id], plain, "param_f1", "held_out/test")

    text = build_report(cfg.tracking, [plain, held, hyper.run_id], "param_f1", tmp_path).with_suffix(".md")
    main_table, new_personas = text.read_text().split("## New personas: 2 held out of training")
    assert f"({hyper.run_id[:8]})" not in main_table and f"({hyper.run_id[:8]})" in new_personas
    assert f"({held[:8]})" in new_personas and f"({plain[:8]})" in main_table
    # unnamed (`make report`): the newest unified that holds nobody out, not the newer held-out one
    text = build_report(cfg.tracking, [], "param_f1", tmp_path / "latest").with_suffix(".md").read_text()
    assert f"unified_lora ({plain[:8]})" in text and held[:8] not in text
    with pytest.raises(ConfigError, match="every run named holds personas out"):
        build_report(cfg.tracking, [held, hyper.run_id], "param_f1", tmp_path / "none")
