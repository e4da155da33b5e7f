"""Serving throughput: `research predict` over a file of requests, side by side in one run.

A file of 1,000 requests (20 each for 50 personas, from their val and test dialogues) is
answered through three routing tables on one store:
- mixed: a quarter of the personas each routed to a per-persona LoRA (`lora`), a
  retrieval adapter (`lora+context`: its prompts retrieve from the persona's history, every
  query of the file embedded in one call; retrieval's default verbatim exchanges) and a
  learned prompt (`prompt+lora`), the last quarter to the unified fallback;
- mixed, settings: the same, its retrieval adapter writing the compact `format=settings`
  (retrieval's fast option: shorter prompts);
- unified: every persona to the unified adapter.
Each side reads the file, answers it in mixed batches and writes the predictions, as
`research predict` does once its model is loaded; requests/s per side,
`predict_mixed_vs_unified` (mixed time / unified time; target <= 1.5) and
`predict_mixed_settings_vs_unified`, each side's best of 3, the sides' order reversed each time. The adapters are trained for a few hundred steps
(not to convergence: their replies are of a trained adapter's length), registered and
promoted in a throw-away MLflow store.

Every figure printed is also written to bench/results.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import mlflow
import polars as pl
from record import arguments, record  # bench/ is on the path when a script here runs

from bench import best_times
from research.data.schema import assign_splits, load_dataset, read_requests
from research.datamodules.persona import PersonaDataModule
from research.models.base import base_fingerprint, load_base
from research.models.devices import inference_device
from research.modules import METHODS
from research.modules.base import Source
from research.recipes.experiment import load_config
from research.recipes.logs import quiet_libraries
from research.recipes.run import ensure_data_and_base
from research.recipes.serve import REQUEST_FIELDS, RoutedModel, known_users, write_predictions
from research.recipes.train import build_module, make_trainer, run_tags
from research.tracking.registry import promote, register
from research.tracking.runs import experiment_id

PERSONAS, PER_PERSONA, STEPS, REPEATS = 50, 20, 300, 3  # --smoke: every persona (6), 4, 2, 1
ROUTED = ("per_persona_lora", "retrieval", "prompt_persona")  # a quarter of the personas each; the rest unified


def trained_run(overrides: list[str], method: str, steps: int, unified: Path | None, out: Path) -> str:
    """A finished MLflow run holding `method`'s adapter after `steps` training steps (built on the
    unified adapter in `unified` when the method is), as `research train` logs one."""
    cfg = load_config(None, overrides, method)
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer, model = load_base(cfg.base_model)
    needs = METHODS[method].needs(cfg.method_args)
    context = needs.context(cfg.data) if needs.context else None
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed, context=context)
    datamodule.prepare_data()
    datamodule.setup()
    sources = {"unified_run": [Source("bench", "unified_lora", unified)]} if unified else {}
    module = build_module(cfg, model, tokenizer, datamodule, sources)[0]
    if module.trainable:
        # no validation, so no early stopping on it (as in many_adapters.py)
        settings = dict(max_steps=steps, limit_val_batches=0, enable_progress_bar=False, callbacks=[])
        make_trainer(cfg, None, module.per_group_weights, **settings).fit(module, datamodule=datamodule)
    module.save_adapter(out / "adapter")
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    run = client.create_run(experiment_id(cfg.tracking), run_name=f"bench {method}", tags=run_tags(cfg))
    client.log_artifacts(run.info.run_id, str(out / "adapter"), "adapter")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def request_file(data_dir: str, cfg, personas: int, per_persona: int, path: Path) -> int:
    """`per_persona` requests for each of the first `personas` personas: each assistant turn's
    conversation up to its user turn, from the persona's val and test dialogues."""
    _, dialogues = load_dataset(data_dir)
    dialogues = assign_splits(dialogues, cfg.data.val_fraction, cfg.data.test_fraction)
    chosen = sorted(dialogues["persona_id"].unique())[:personas]
    rows = []
    for persona in chosen:
        mine = dialogues.filter((pl.col("persona_id") == persona) & (pl.col("split") != "train")).sort("timestamp")
        asked = [
            {**{f: row[f] for f in REQUEST_FIELDS if f != "turns"}, "turns": row["turns"][: 2 * k + 1]}
            for row in mine.iter_rows(named=True)
            for k in range(len(row["turns"]) // 2)
        ]
        rows += (asked * per_persona)[:per_persona]
    pl.DataFrame(rows).write_ndjson(path)
    return len(rows)


def main() -> None:
    quiet_libraries()
    args = arguments(__doc__)
    smoke = args.smoke
    personas, per_persona, steps, repeats = (1000, 4, 2, 1) if smoke else (PERSONAS, PER_PERSONA, STEPS, REPEATS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifacts={tmp}/artifacts"]
        overrides = [*args.overrides, *store, "train.max_epochs=1"]
        cfg = load_config(None, overrides, "unified_lora")
        ensure_data_and_base(cfg)
        started = time.perf_counter()
        unified_run = trained_run(overrides, "unified_lora", steps, None, tmp / "unified_lora")
        runs = {m: trained_run(overrides, m, steps, tmp / "unified_lora", tmp / m) for m in ROUTED}
        settings = [*overrides, "method_args.format=settings"]
        settings_run = trained_run(settings, "retrieval", steps, tmp / "unified_lora", tmp / "retrieval-settings")
        print(f"adapters trained for {steps} steps and logged in {time.perf_counter() - started:.0f} s")

        requests = tmp / "requests.jsonl"
        n = request_file(cfg.data.dir, cfg, personas, per_persona, requests)
        ids = sorted({row["persona_id"] for row in read_requests(requests)})
        fingerprint = base_fingerprint(cfg.base_model)
        unified_version = register(cfg.tracking.uri, unified_run).version
        tables = {side: tmp / f"routing-{side}" for side in ("unified", "mixed", "mixed_settings")}
        for table in tables.values():
            promote(cfg.tracking.uri, table, "unified_lora", unified_version, "all", fingerprint)
        quarter = len(ids) // 4 or 1
        versions = {method: register(cfg.tracking.uri, runs[method]).version for method in ROUTED}
        for k, method in enumerate(ROUTED):
            personas = ids[k * quarter : (k + 1) * quarter]
            promote(cfg.tracking.uri, tables["mixed"], method, versions[method], personas, fingerprint)
            # the same routes, retrieval's through its settings-format run (another version)
            version = register(cfg.tracking.uri, settings_run).version if method == "retrieval" else versions[method]
            promote(cfg.tracking.uri, tables["mixed_settings"], method, version, personas, fingerprint)

        users, device = known_users(cfg.data.dir), inference_device(cfg.train)
        loaded, models = {}, {}
        for side, table in tables.items():
            start = time.perf_counter()
            models[side] = RoutedModel(cfg.base_model, cfg.tracking.uri, table, cfg.eval.max_new_tokens, users, device)
            loaded[side] = time.perf_counter() - start

        def predict(side: str) -> float:
            start = time.perf_counter()
            file = read_requests(requests)
            write_predictions(tmp / f"{side}.jsonl", file, models[side].answer(file, cfg.eval.batch_size))
            return time.perf_counter() - start

        best = best_times({side: lambda side=side: predict(side) for side in tables}, repeats)

    results = {
        "predict_requests_per_s_unified": n / best["unified"],
        "predict_requests_per_s_mixed": n / best["mixed"],
        "predict_requests_per_s_mixed_settings": n / best["mixed_settings"],
        "predict_mixed_vs_unified": best["mixed"] / best["unified"],
        "predict_mixed_settings_vs_unified": best["mixed_settings"] / best["unified"],
        "predict_load_s_mixed": loaded["mixed"],
        "predict_load_s_unified": loaded["unified"],
    }
    print(f"research predict, {n} requests across {len(ids)} personas, batch {cfg.eval.batch_size}, on {device}:")
    print(f"  unified only                       {results['predict_requests_per_s_unified']:7.1f} requests/s")
    print(f"  mixed (lora, lora+context,         {results['predict_requests_per_s_mixed']:7.1f} requests/s")
    print("         prompt+lora, unified)")
    print(f"  mixed, retrieval format=settings   {results['predict_requests_per_s_mixed_settings']:7.1f} requests/s")
    print(f"  predict_mixed_vs_unified = {results['predict_mixed_vs_unified']:.3f} (target <= 1.5)")
    print(f"  predict_mixed_settings_vs_unified = {results['predict_mixed_settings_vs_unified']:.3f}")
    print(f"  loading the routing table's adapters: mixed {loaded['mixed']:.1f} s, unified {loaded['unified']:.1f} s")
    record(results, args.results)


if __name__ == "__main__":
    main()
