"""The comparison against unified, on per-persona tables built by hand."""

import polars as pl
import pytest

from research.evaluation.statistics import compare


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
