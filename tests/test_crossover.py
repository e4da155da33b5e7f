"""`research crossover`: a dataset per cell, every method per cell beside unified, a parent
run with a child per cell holding its figures, resumable; the map and its heatmaps."""

import mlflow

from research.recipes.crossover import Grid, run_crossover
from research.recipes.results import publish


def test_a_grid_trains_every_cell_once_logs_a_child_per_cell_resumes_and_is_published(experiment, base_dir, tmp_path):
    grid = Grid("test", train_dialogues=(2, 4), signals=(0.0, 1.0), personas=4, seeds=1)
    page = run_crossover(experiment, grid, ["hybrid_lora"], tmp_path / "reports" / "crossover", tmp_path / "cells")
    tracking = next(o.split("=", 1)[1] for o in experiment if o.startswith("tracking.uri="))
    client = mlflow.tracking.MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name("persona-lab").experiment_id
    [parent] = client.search_runs([experiment_id], "tags.crossover != ''")
    cells = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["cell"] for c in cells) == [
        f"train{n}-signal{s}-personas4" for n in (2, 4) for s in (0, 1)
    ]
    for cell in cells:
        assert cell.info.status == "FINISHED"
        unified, hybrid = (client.get_run(cell.data.tags[f"run.{m}"]) for m in ("unified_lora", "hybrid_lora"))
        assert unified.data.tags["mlflow.parentRunId"] == hybrid.data.tags["mlflow.parentRunId"] == cell.info.run_id
        assert hybrid.data.tags["source.unified_run"] == unified.info.run_id
        assert unified.data.params["data.dir"].startswith(str(tmp_path / "cells" / cell.data.tags["cell"]))
        assert {"gain/hybrid_lora", "clears/hybrid_lora", "anchor/headroom"} <= cell.data.metrics.keys()
        if "signal0-" in cell.data.tags["cell"]:  # every persona has the population's preferences
            assert cell.data.metrics["anchor/headroom"] == 0.0 and "share/hybrid_lora" not in cell.data.metrics
    text = page.read_text()
    assert "| hybrid_lora | " in text and "| 4 dialogues, signal 1 | " in text
    assert {p.name for p in page.parent.glob("*.png")} == {"crossover_hybrid_lora.png", "crossover_best.png"}

    runs = len(client.search_runs([experiment_id]))
    run_crossover(experiment, grid, ["hybrid_lora"], tmp_path / "again", tmp_path / "cells")
    assert len(client.search_runs([experiment_id])) == runs  # resumed: nothing trained or made again
    assert (tmp_path / "again" / "crossover.md").read_text() == text

    results = publish(tmp_path / "reports", tmp_path / "docs", base_dir)
    published = results.read_text()
    assert "## Where personalization starts to beat unified (`make crossover`)" in published
    assert "](results/crossover_crossover_best.png)" in published and "Not yet measured here: `make study`" in published
    assert (tmp_path / "docs" / "results" / "crossover_crossover_best.png").exists()
