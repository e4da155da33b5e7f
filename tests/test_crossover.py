"""`research crossover`: a dataset per cell, every method per cell beside unified, a parent
run with a child per cell holding its figures, resumable; the map and its heatmaps."""

import mlflow

from research.recipes.crossover import Grid, best_per_cell, first_wins, markdown, run_crossover
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
        assert {"gain/hybrid_lora", "clears/hybrid_lora", "beats/hybrid_lora"} <= cell.data.metrics.keys()
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


def test_a_method_wins_where_it_beats_unified_and_the_whole_bar_is_reported_apart():
    grid = Grid("test", train_dialogues=(5, 20), signals=(1.0,), personas=16, seeds=1)

    def figures(gain: float, improved: float, p: float, worst: float) -> dict:
        bar = gain >= 0.03 and improved > 0.6 and p < 0.05 and worst > 0.7
        return {
            "mean_difference": gain,
            "improved_share": improved,
            "p_holm": p,
            "min_persona": worst,
            "share": gain,
            "clears": bar,
        }

    results = {  # at 20 dialogues both beat unified; only retrieval's worst persona is above the floor
        (5, 1.0): {"per_persona_lora": figures(0.10, 0.55, 0.01, 0.2), "retrieval": figures(0.02, 0.9, 0.01, 0.8)},
        (20, 1.0): {"per_persona_lora": figures(0.20, 0.8, 0.01, 0.3), "retrieval": figures(0.05, 0.7, 0.04, 0.8)},
    }
    assert first_wins(grid, results, "per_persona_lora") == {1.0: 20}
    assert first_wins(grid, results, "per_persona_lora", wins=lambda f: f["clears"]) == {1.0: None}
    assert first_wins(grid, results, "retrieval", wins=lambda f: f["clears"]) == {1.0: 20}
    assert best_per_cell(results) == {(5, 1.0): "unified_lora", (20, 1.0): "per_persona_lora"}
    text = markdown(grid, results, "parent", {})
    assert "| per_persona_lora | from 20 dialogues |" in text
    assert "| retrieval | from 20 dialogues; whole bar from 20 dialogues |" in text
    assert "| 5 dialogues, signal 1 | +0.10 (+0.100, no win) | +0.02 (+0.020, no win) |" in text
