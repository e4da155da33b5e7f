"""The MLflow UI as a researcher opens it: Debian's Chromium renders the runs table (the
study's saved view) and a comparison of two methods from a real store."""

import os
import shutil

import pytest

from research.config import TrackingConfig, build, parse_overrides
from research.recipes.ui import check

# CI installs Chromium (.ci/run) and sets this, so there the check cannot be skipped
REQUIRED = os.environ.get("PERSONA_LAB_REQUIRE_CHROMIUM") == "1"


@pytest.mark.skipif(not REQUIRED and shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_ui_check_renders_runs_table_and_comparison(source_runs, tmp_path):
    experiment, runs = source_runs
    tracking = build(TrackingConfig, parse_overrides([o for o in experiment if o.startswith("tracking.")])["tracking"])
    shots = check(tracking, 5391, tmp_path / "ui")
    assert [s.name for s in shots] == ["runs_table.png", "compare.png"]
    assert all(s.stat().st_size > 20_000 for s in shots)  # a rendered page, not a blank one


def test_run_names_say_what_differs_from_the_method_defaults():
    from research.recipes.experiment import load_config
    from research.recipes.train import describe

    assert describe(load_config(None, [], "unified_lora")) == "unified_lora"
    told = load_config(None, ["data.oracle=resolved", "tracking.experiment=x", "data.cache_dir=/c"], "unified_lora")
    assert describe(told) == "unified_lora data.oracle=resolved"  # where it is tracked is no difference
    assert describe(load_config(None, ["base_model=/models/smollm2-135m-instruct"], "unified_lora")).endswith(
        "base_model=smollm2-135m-instruct"
    )
