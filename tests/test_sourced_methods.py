"""Methods built on finished runs: source checks, the hybrid export, the L2 constraint."""

import mlflow
import polars as pl
import pytest
import torch
from peft import PeftModel

from research.datamodules.persona import PersonaDataModule
from research.models.base import load_base
from research.recipes.experiment import load_config
from research.recipes.train import build_module, train_and_evaluate
from research.tracking.sources import SourceError


def _module(experiment, method, *extra):
    cfg = load_config(None, [*experiment, *extra], method)
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    return cfg, datamodule, build_module(cfg, model, tokenizer, datamodule)[0]


def _runs(cfg, method):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    return (
        mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.method = '{method}'") if experiment else []
    )


def test_missing_source_fails_before_any_run_is_created(experiment):
    cfg = load_config(None, experiment, "hybrid_lora")
    with pytest.raises(SourceError, match="no finished unified_lora run"):
        train_and_evaluate(cfg)
    assert len(_runs(cfg, "hybrid_lora")) == 0


def test_source_of_another_method_or_unfinished_is_refused(source_runs):
    experiment, runs = source_runs
    with pytest.raises(SourceError, match="has method 'per_persona_lora'"):
        train_and_evaluate(
            load_config(None, [*experiment, f"method_args.unified_run={runs['per_persona_lora']}"], "hybrid_lora")
        )
    with pytest.raises(SourceError, match="source_run: run id '0123abcd': no run in experiment"):
        train_and_evaluate(load_config(None, [*experiment, "method_args.source_run=0123abcd"], "moe_merge"))
    with pytest.raises(SourceError, match="does not exist"):
        train_and_evaluate(load_config(None, [*experiment, f"method_args.source_run={'0' * 32}"], "moe_merge"))
    cfg = load_config(None, experiment, "unified_lora")
    failed = mlflow.tracking.MlflowClient(cfg.tracking.uri).create_run(
        mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id, tags={"method": "unified_lora"}
    )
    mlflow.tracking.MlflowClient(cfg.tracking.uri).set_terminated(failed.info.run_id, "FAILED")
    with pytest.raises(SourceError, match="status 'FAILED'"):
        train_and_evaluate(
            load_config(None, [*experiment, f"method_args.unified_run={failed.info.run_id}"], "hybrid_lora")
        )


def test_source_on_another_dataset_is_refused(source_runs, data_root, tmp_path):
    import shutil

    experiment, runs = source_runs
    other = tmp_path / "other"
    shutil.copytree(data_root / "personas", other)
    dialogues = pl.read_parquet(other / "dialogues.parquet")
    dialogues.head(dialogues.height - 1).write_parquet(other / "dialogues.parquet")
    moved = [o for o in experiment if not o.startswith("data.dir=")] + [f"data.dir={other}"]
    with pytest.raises(SourceError, match="differs from this run in dataset"):
        train_and_evaluate(
            load_config(None, [*moved, f"method_args.unified_run={runs['unified_lora']}"], "hybrid_lora")
        )


@pytest.mark.parametrize(
    ("override", "field"), [("data.test_fraction=0.5", "splits"), ("data.user_name=false", "prompt")]
)
def test_source_with_other_splits_or_prompts_is_refused_naming_the_field(source_runs, override, field):
    experiment, runs = source_runs
    named = load_config(None, [*experiment, override, f"method_args.unified_run={runs['unified_lora']}"], "hybrid_lora")
    with pytest.raises(SourceError, match=f"differs from this run in {field}"):
        train_and_evaluate(named)
    with pytest.raises(SourceError, match="no finished unified_lora run"):  # an empty field finds none either
        train_and_evaluate(load_config(None, [*experiment, override], "hybrid_lora"))


def test_sweep_trials_and_seeds_parents_are_never_implicit_sources(source_runs):
    from research.tracking.sources import find_source

    experiment, runs = source_runs
    client = mlflow.tracking.MlflowClient(load_config(None, experiment, "unified_lora").tracking.uri)
    unified = client.get_run(runs["unified_lora"])
    newer = []
    for extra in ({"trial": "0", "study": "s"}, {"aggregate": "seeds"}):  # newer, same lineage
        newer.append(client.create_run(unified.info.experiment_id, tags={**unified.data.tags, **extra}).info.run_id)
        client.set_terminated(newer[-1], "FINISHED")
    try:
        found = find_source("unified_lora", "", unified.data.tags, unified.info.experiment_id, "unified_run")
        assert found.info.run_id == runs["unified_lora"]
    finally:  # the store is shared by the session's tests
        for run_id in newer:
            client.delete_run(run_id)


def test_l2_term_is_zero_at_start_and_matches_a_hand_computation_after_a_step(source_runs):
    experiment, runs = source_runs
    cfg, dm, module = _module(experiment, "constrained_lora", f"method_args.unified_run={runs['unified_lora']}")
    batch = dm._collate(dm.examples["train"][:4])
    module.train()
    module.router.route(batch["group_idx"])
    assert module.l2_penalty().item() == 0.0
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    (module.model_step(batch) + cfg.method_args.l2_lambda * module.l2_penalty()).backward()
    optimizer.step()
    by_hand = sum(
        ((layer.scaling * layer.lora_B[g] @ layer.lora_A[g]) ** 2).sum()
        for layer in module.layers.values()
        for g in batch["group_idx"].unique().tolist()
    )
    assert by_hand > 0
    torch.testing.assert_close(module.l2_penalty(), by_hand, rtol=1e-5, atol=1e-10)


def test_hybrid_export_holds_unified_and_persona_and_reloads_on_the_plain_base(source_runs, tmp_path):
    experiment, runs = source_runs
    cfg, dm, module = _module(experiment, "constrained_lora", f"method_args.unified_run={runs['unified_lora']}")
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    module.eval().save_adapter(tmp_path)
    persona = dm.persona_ids[1]
    batch = dm._collate([e for e in dm.examples["val"] if e["persona_id"] == persona][:1])
    reloaded = PeftModel.from_pretrained(load_base(cfg.base_model)[1], tmp_path / persona).eval()
    with torch.no_grad():
        module.router.route(batch["group_idx"])
        engine = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        peft = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(engine, peft, rtol=1e-4, atol=1e-4)


def test_runs_are_read_past_the_first_page(tmp_path):
    """A source or a report row behind a large sweep is still found: every page is read."""
    from research.tracking.runs import iter_runs

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    made = [client.create_run(experiment, tags={"i": str(i)}).info.run_id for i in range(5)]
    found = [run.info.run_id for run in iter_runs(client, experiment, "", ("attributes.start_time ASC",), page=2)]
    assert sorted(found) == sorted(made) and len(found) == 5
    only = list(iter_runs(client, experiment, "tags.i = '3'", page=2))
    assert [run.data.tags["i"] for run in only] == ["3"]


def test_a_run_is_found_by_its_short_id_and_an_ambiguous_or_unknown_one_is_refused(tmp_path):
    """Tables print 8 characters of a run id; the store is asked for the runs they start with."""
    from research.tracking.runs import RunNotFound, find_run

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    made = [client.create_run(experiment).info.run_id for _ in range(17)]  # 17 ids: two share a first hex digit
    assert find_run(client, experiment, made[3][:8]).info.run_id == made[3]
    assert find_run(client, experiment, made[3]).info.run_id == made[3]
    shared = next(d for d in "0123456789abcdef" if sum(r.startswith(d) for r in made) > 1)
    with pytest.raises(RunNotFound, match="more than one run"):
        find_run(client, experiment, shared)
    with pytest.raises(RunNotFound, match="no run"):
        find_run(client, experiment, "zz' OR 1=1")
