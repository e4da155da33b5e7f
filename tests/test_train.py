"""Every registered method, end to end on tiny data: fit, evaluate, MLflow run and artifacts."""

from pathlib import Path

import mlflow
import polars as pl
import pytest
import torch

from research.config import ConfigError
from research.evaluation.metrics import METRICS
from research.modules import METHODS
from research.modules.base import source_fields
from research.recipes.experiment import load_config
from research.recipes.train import build_module, train_and_evaluate, train_over_seeds


def _client(cfg):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.tracking.MlflowClient()


# methods whose defaults take long on any data: a few rounds of the same loop
QUICK = {"reptile": ["method_args.outer_steps=3", "method_args.inner_steps=1"]}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_logs_a_finished_run(method, experiment, source_runs):
    sources = source_fields(METHODS[method].config_class)
    if sources:  # built on finished runs: use the store that holds them
        experiment, runs = source_runs
        experiment = [*experiment] + [  # runs of any method: the per-persona one
            f"method_args.{name}={runs['per_persona_lora']}" for name, wanted in sources.items() if wanted == "*"
        ]
    # 12 steps: a train/loss point every 10
    cfg = load_config(None, [*experiment, "train.batch_size=2", *QUICK.get(method, [])], method)
    result = train_and_evaluate(cfg)
    run = _client(cfg).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == method and run.data.tags["dataset"] and run.data.tags["git_sha"]
    assert {f"{split}/{m}" for split in ("val", "test") for m in METRICS} <= set(run.data.metrics)
    assert run.data.params["method_args.r" if method == "unified_lora" else "train.lr"]
    artifacts = mlflow.artifacts.download_artifacts(run_id=result.run_id)
    per_persona = pl.read_parquet(f"{artifacts}/per_persona.parquet")
    # held-out personas are scored again, apart (held_out/<split>)
    scored = per_persona.filter(~pl.col("split").str.starts_with("held_out/"))
    assert (
        set(per_persona.columns) == {"split", "persona_id", *METRICS} and scored.height == 12
    )  # 6 personas x 2 splits
    predictions = pl.read_parquet(f"{artifacts}/predictions.parquet")
    assert {"persona_id", "dialogue_id", "turn", "reference", "prediction"} <= set(predictions.columns)
    assert load_config(f"{artifacts}/config.yaml").method == method
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [run.data.tags["dataset"]]
    models = _client(cfg).search_logged_models([run.info.experiment_id], f"source_run_id = '{result.run_id}'")
    if method != "no_adaptation":
        assert list(Path(artifacts, "adapter").rglob("adapter_config.json")), "adapter(s) in PEFT format"
        [model] = models  # the adapter as an MLflow logged model, pointing at the run's adapter/
        assert model.tags["adapter_uri"].endswith("/adapter") and "test/param_f1" in {m.key for m in model.metrics}
    else:
        assert not models
    if method == "selective_routing":  # its margin's score on val dialogues it did not route with
        assert "val/crossfit_embedding_similarity" in run.data.metrics
    if method == "unified_lora":
        for curve in ("train/loss", "val/loss"):
            assert _client(cfg).get_metric_history(result.run_id, curve), f"{curve} curve logged"


def test_unified_lora_adapter_reloads_in_plain_peft_with_identical_logits(experiment, tmp_path):
    from peft import PeftModel

    from research.datamodules.persona import PersonaDataModule
    from research.models.base import load_base
    from research.recipes.train import fit

    cfg = load_config(None, experiment, "unified_lora")
    tokenizer, model = load_base(cfg.base_model)
    dm = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    dm.prepare_data()
    dm.setup()
    module = build_module(cfg, model, tokenizer, dm)[0]
    fit(module, dm, cfg, run_id=None)
    module.save_adapter(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = PeftModel.from_pretrained(load_base(cfg.base_model)[1], tmp_path / "adapter").eval()
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    with torch.no_grad():
        expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(expected, got)
    assert any(v.abs().sum() > 0 for k, v in module.trainable_state().items() if "lora_B" in k)  # it trained


def test_same_seed_same_metrics(experiment):
    first = train_and_evaluate(load_config(None, experiment, "unified_lora"))
    second = train_and_evaluate(load_config(None, experiment, "unified_lora"))
    assert first.metrics == second.metrics and first.run_id != second.run_id


def test_seeds_parent_holds_per_persona_means_and_is_never_an_implicit_source(experiment):
    from research.recipes.analysis import compare_runs
    from research.tracking.sources import find_source

    cfg = load_config(None, experiment, "unified_lora")
    parent = train_over_seeds(cfg, 2)
    client = _client(cfg)
    children = client.search_runs(
        [client.get_run(parent.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'"
    )
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    tables = [
        pl.read_parquet(mlflow.artifacts.download_artifacts(run_id=c.info.run_id, artifact_path="per_persona.parquet"))
        for c in children
    ]
    expected = pl.concat(tables).group_by("split", "persona_id").agg(pl.exclude("split", "persona_id").mean())
    assert parent.per_persona.equals(expected.sort("split", "persona_id"))
    run = client.get_run(parent.run_id)
    assert (
        run.info.status == "FINISHED"
        and run.data.tags["aggregate"] == "seeds"
        and "seeds_std/test/param_f1" in run.data.metrics
    )
    latest = find_source("unified_lora", "", run.data.tags, run.info.experiment_id, "unified_run")
    assert latest.info.run_id in {c.info.run_id for c in children}  # the newest usable run is a child, not the parent
    [(name, stats)] = compare_runs(cfg.tracking, [parent.run_id], children[0].info.run_id, "param_f1", "test")
    assert name.startswith("unified_lora") and stats["personas"] == 6


def test_crash_marks_the_run_failed_with_the_error(experiment, monkeypatch):
    import research.recipes.train as recipe

    def crash(*args, **kwargs):  # a bug inside the run, after every input was checked
        raise RuntimeError("generation crashed")

    monkeypatch.setattr(recipe, "generate_split", crash)
    cfg = load_config(None, experiment, "no_adaptation")
    with pytest.raises(RuntimeError):
        train_and_evaluate(cfg)
    (run,) = _client(cfg).search_runs([mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert "generation crashed" in run.data.tags["error"]


def test_a_layer_the_base_lacks_is_refused_before_any_run(experiment):
    cfg = load_config(None, [*experiment, "method_args.target_modules=[no_such_layer]"], "unified_lora")
    with pytest.raises(ConfigError, match="method_args.target_modules: the base model has no Linear layer named"):
        train_and_evaluate(cfg)
    assert not _client(cfg).search_runs([mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id])


def test_a_metric_to_maximise_keeps_its_best_epoch(experiment):
    """train.monitor on a metric to maximise: early stopping and best-weight restore use
    max (by default for anything not a loss), and the metric is generated every epoch."""
    from research.recipes.train import RestoreBestWeights, make_trainer, monitor_mode

    cfg = load_config(None, [*experiment, "train.monitor=val/param_f1", "train.max_epochs=2"], "unified_lora")
    assert monitor_mode(cfg.train) == "max" and monitor_mode(load_config(None, [], "unified_lora").train) == "min"
    result = train_and_evaluate(cfg)
    history = [m.value for m in _client(cfg).get_metric_history(result.run_id, "val/param_f1")]
    assert len(history) == 3, "val/param_f1 generated after each of the 2 epochs, then the final evaluation's"
    restore = next(c for c in make_trainer(cfg).callbacks if isinstance(c, RestoreBestWeights))
    early = next(c for c in make_trainer(cfg).callbacks if type(c).__name__ == "EarlyStopping")
    assert restore.sign == -1.0 and early.mode == "max"


def test_best_weights_are_the_best_epochs_in_either_direction():
    from types import SimpleNamespace

    from research.recipes.train import RestoreBestWeights

    class Weights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def trainable_state(self):
            return {"w": self.w.detach().clone()}

    for mode, best in (("max", 0.9), ("min", 0.2)):
        module, restore = Weights(), RestoreBestWeights("val/f1", mode)
        for value in (0.5, 0.9, 0.2):  # the weights are the epoch's score, so they say which epoch was kept
            module.w.data.fill_(value)
            trainer = SimpleNamespace(callback_metrics={"val/f1": torch.tensor(value)}, sanity_checking=False)
            restore.on_validation_end(trainer, module)
        restore.on_fit_end(trainer, module)
        assert module.w.item() == pytest.approx(best), mode
