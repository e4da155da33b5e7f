"""The comparison against unified, on per-persona tables built by hand."""

import polars as pl
import pytest

from research.evaluation.statistics import StatisticsError, compare, headroom_captured, holm, verdict


def _table(scores, split="test"):
    return pl.DataFrame(
        {
            "split": [split] * len(scores),
            "persona_id": [f"p{i}" for i in range(len(scores))],
            "embedding_similarity": scores,
        }
    )


def test_compare_counts_improved_personas_and_tests_the_paired_difference():
    base = _table([0.5, 0.6, 0.7, 0.8])
    method = _table([0.6, 0.6, 0.9, 0.7])
    result = compare(pl.concat([method, _table([0.0] * 4, "val")]), base)  # val rows are ignored
    assert result["personas"] == 4 and result["improved_share"] == 0.5
    assert result["mean_difference"] == pytest.approx(0.05) and result["min_persona"] == 0.6
    assert result["ci95_low"] <= 0.05 <= result["ci95_high"]
    from scipy import stats

    assert result["p_value"] == pytest.approx(stats.ttest_rel([0.6, 0.6, 0.9, 0.7], [0.5, 0.6, 0.7, 0.8]).pvalue)


def test_compare_refuses_personas_missing_on_one_side_and_empty_sides():
    with pytest.raises(StatisticsError, match=r"4 in the method, 3 in the baseline; 1 on one side only, e.g. p3"):
        compare(_table([0.5] * 4), _table([0.5] * 3))
    with pytest.raises(StatisticsError, match="no test personas on the baseline side"):
        compare(_table([0.5] * 4), _table([0.5] * 4, "val"))


def test_compare_does_not_depend_on_row_order():
    method, base = _table([0.6, 0.2, 0.9, 0.7, 0.4]), _table([0.5, 0.6, 0.7, 0.8, 0.1])
    assert compare(method, base) == compare(method.reverse(), base.sample(fraction=1.0, shuffle=True, seed=3))


def test_holm_matches_a_hand_computed_case():
    # sorted p: 0.01 (x3), 0.02 (x2), 0.04 (x1); step-down keeps the running maximum
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_the_bar_names_what_a_method_misses_and_headroom_is_the_gap_it_closes():
    result = {"improved_share": 0.75, "mean_difference": 0.05, "min_persona": 0.72, "baseline_mean": 0.60}
    assert verdict(result, 0.01) == []
    assert verdict({**result, "improved_share": 0.6, "min_persona": 0.5}, 0.2) == [
        "improved 60% <= 60%",
        "min persona 0.500 <= 0.70",
        "p 0.2 >= 0.05",
    ]
    assert headroom_captured(result, 0.80) == pytest.approx(0.25)  # +0.05 of the 0.20 gap
    assert headroom_captured(result, None) is None


def test_runs_on_different_splits_or_prompts_are_refused_naming_the_field(tmp_path):
    import mlflow

    from research.recipes.analysis import check_comparable

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lineage = {"dataset": "d1", "splits": "val=0.166667,test=0.166667", "prompt": "p", "base_fingerprint": "b1"}
    made = []
    for tags, tokens in ((lineage, "64"), ({**lineage, "splits": "val=0.166667,test=0"}, "64"), (lineage, "32")):
        with mlflow.start_run(tags=tags) as run:
            mlflow.log_param("eval.max_new_tokens", tokens)
        made.append(mlflow.get_run(run.info.run_id))
    check_comparable(made[0], made[0])
    with pytest.raises(
        StatisticsError, match=r"differ in splits \('val=0.166667,test=0.166667' vs 'val=0.166667,test=0'\)"
    ):
        check_comparable(made[0], made[1])
    with pytest.raises(StatisticsError, match=r"differ in eval.max_new_tokens \('64' vs '32'\)"):
        check_comparable(made[0], made[2])
