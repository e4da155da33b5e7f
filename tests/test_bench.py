"""Every benchmark script runs at smoke sizes and records the figures it prints (no timing
is asserted: on shared CI cores it would measure the neighbours)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import overrides

BENCH = Path(__file__).parents[1] / "bench"

FIGURES = {
    "bench.py": {
        "train_vs_plain_loop",
        "train_eager_vs_sdpa",
        "eval_vs_plain_loop",
        "train_tokens_per_s_lightning",
        "eval_turns_per_s",
        "retrieval_eval_vs_unified",
        "retrieval_settings_eval_vs_unified",
    },
    "many_adapters.py": {
        "per_persona_train_vs_unified",
        "per_persona_eval_vs_unified",
        "naive_per_persona_train_vs_unified",
        "per_persona_train_peak_rss_mb",
        "prompt_persona_train_vs_unified",
    },
    "sweep_overhead.py": {"sweep_first_trial_overhead_fraction", "sweep_trial_overhead_fraction"},
    "mfu.py": {"peak_gflops_bf16", "unified_lora_mfu", "per_persona_lora_mfu", "profile_matmul_share"},
    "serving.py": {
        "predict_requests_per_s_unified",
        "predict_requests_per_s_mixed",
        "predict_mixed_vs_unified",
        "predict_mixed_settings_vs_unified",
    },
    "cold_start.py": {
        "new_persona_hyper_lora_adapter_s",
        "new_persona_lora_fit_s",
        "new_persona_hyper_lora_speedup",
    },
    "gpu_check.py": {
        "unified_lora_mfu",
        "per_persona_train_vs_unified",
        "per_persona_lora_generate_turns_per_s",
        "unified_lora_train_peak_memory_gb",
    },
}


@pytest.mark.parametrize("script", sorted(FIGURES))
def test_benchmark_runs_and_records_its_figures(script, data_root, base_dir, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"earlier_figure": 1.0}))
    # sweep_overhead keeps its MLflow and Optuna stores in a directory of its own
    settings = [o for o in overrides(data_root, base_dir, tmp_path) if not o.startswith("tracking.")]
    if script == "gpu_check.py":  # it builds its own model (a tiny Qwen2 here) and batches: no data, no base
        settings = []
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--results", str(results), *settings],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads(results.read_text())
    assert FIGURES[script] <= recorded.keys() and recorded["earlier_figure"] == 1.0
    assert all(value > 0 for key, value in recorded.items() if key.endswith(("_s", "per_s", "_vs_unified")))
