"""`research report` on a real store: the study's table with the anchors and the instrument
row beside the methods, plots, a self-contained page, a report run; in under 30 seconds."""

import time

import mlflow

from research.recipes.experiment import load_config
from research.recipes.report import build_report
from research.recipes.run import INSTRUMENT_ROWS
from research.recipes.train import train_and_evaluate, train_over_seeds


def test_report_shows_methods_against_unified_beside_anchors_and_instrument(source_runs, tmp_path):
    experiment, runs = source_runs
    told_runs = {}
    for oracle, (tag, name) in INSTRUMENT_ROWS.items():
        told = load_config(None, [*experiment, f"data.oracle={oracle}"], "unified_lora")
        told_runs[name] = train_and_evaluate(told, tags={"instrument": tag}, run_name=name).run_id
    cfg = load_config(None, experiment, "unified_lora")
    started = time.perf_counter()
    page = build_report(cfg.tracking, [], "param_f1", tmp_path / "reports")
    assert time.perf_counter() - started < 30
    text = (tmp_path / "reports" / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ")}
    assert {"simulator anchor: true preferences", "simulator anchor: population average"} <= rows
    assert f"unified_lora ({runs['unified_lora'][:8]})" in rows
    told_rows = {f"**instrument**: {name} ({run_id[:8]})" for name, run_id in told_runs.items()}
    assert told_rows <= rows
    assert f"per_persona_lora ({runs['per_persona_lora'][:8]})" in rows
    per_persona_row = next(line for line in text.splitlines() if line.startswith("| per_persona_lora"))
    assert "clears the bar" in per_persona_row or "misses:" in per_persona_row
    html = page.read_text()
    assert html.count("<table>") == 1 and html.count("data:image/png;base64,") == 3
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    [report] = client.search_runs(
        [client.get_run(told_runs["unified_lora told resolved"]).info.experiment_id],
        "tags.report = 'true'",
        order_by=["attributes.start_time DESC"],
    )
    assert all(report.data.tags[f"report.{name}"] == run_id for name, run_id in told_runs.items())
    assert {a.path for a in client.list_artifacts(report.info.run_id, "report")} >= {
        "report/report.html",
        "report/report.md",
    }


def test_report_prefers_a_methods_seeds_parent(source_runs, tmp_path):
    experiment, runs = source_runs
    parent = train_over_seeds(load_config(None, experiment, "per_persona_lora"), 2)
    cfg = load_config(None, experiment, "unified_lora")
    build_report(cfg.tracking, [], "param_f1", tmp_path)
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| per_persona_lora")]
    assert len(rows) == 1 and f"({parent.run_id[:8]})" in rows[0]  # per-persona means across the 2 seeds


def test_a_run_named_after_its_overrides_gives_a_valid_tag_key():
    from mlflow.utils.validation import _validate_tag_name

    from research.recipes.report import tag_key

    key = tag_key("report.unified_lora train.lr=1e-3 method_args.target_modules=[q_proj]")
    _validate_tag_name(key)  # raises on a character MLflow refuses
    assert key == "report.unified_lora train.lr_1e-3 method_args.target_modules__q_proj_"
