import json
import subprocess
import sys


def _research(*args):
    return subprocess.run([sys.executable, "-m", "research.cli", *args], capture_output=True, text=True, timeout=120)


def test_score_prints_the_turn_metrics_as_json():
    out = _research(
        "score",
        "--reference",
        "Setting the AC to 22 degrees and lights to 50% brightness.",
        "--prediction",
        "I'll set the AC to 20 degrees and the lights to 50%.",
    )
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert scores["device_precision"] == 1.0 and scores["numerical_precision"] == 0.5
    assert 0 < scores["embedding_similarity"] < 1
    assert scores["extracted"]["prediction"]["numbers"] == ["20", "50"]


def test_bad_override_is_a_clear_error():
    out = _research("train", "--method", "unified_lora", "train.lrr=1")
    assert out.returncode == 2
    assert "unknown key train.lrr (allowed:" in out.stderr


def test_print_config_resolves_everything():
    out = _research("train", "--method", "unified_lora", "--print-config", "method_args.r=2")
    assert out.returncode == 0, out.stderr
    assert "method: unified_lora" in out.stdout and "r: 2" in out.stdout


def test_overrides_may_follow_options_and_refusals_say_why(tmp_path):
    out = _research(
        "promote",
        "unified_lora",
        "7",
        "--routing",
        str(tmp_path / "routing"),
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
    )
    assert out.returncode == 2 and "registered model unified_lora has no version 7" in out.stderr
    assert not (tmp_path / "routing" / "table.json").exists()
    out = _research("routing", "show", "--routing", str(tmp_path / "routing"), "--bogus")
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr


def test_compare_and_cluster_commands_call_the_recipes(source_runs, data_root, base_dir, tmp_path):
    experiment, runs = source_runs
    tracking = [o for o in experiment if o.startswith("tracking.")]
    out = _research("compare", runs["per_persona_lora"], "--overrides", *tracking)
    assert out.returncode == 0, out.stderr
    assert "per_persona_lora" in out.stdout and "improved" in out.stdout  # against the latest unified run
    # the 8 characters the tables print name a run too; an unknown id is a clear error
    out = _research(
        "compare", runs["per_persona_lora"][:8], "--against", runs["unified_lora"][:8], "--overrides", *tracking
    )
    assert out.returncode == 0 and "per_persona_lora" in out.stdout, out.stderr
    out = _research("compare", "0000ffff", "--overrides", *tracking)
    assert out.returncode == 2 and "run id '0000ffff': no run in experiment" in out.stderr
    plot = tmp_path / "clusters.png"
    out = _research(
        "cluster",
        "--base-model",
        str(base_dir),
        "--plot",
        str(plot),
        f"data.dir={data_root / 'personas'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "k=2",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("k=2 silhouette=") and plot.stat().st_size > 0


def test_train_prints_its_bars_and_a_table_readable_in_80_columns_without_library_noise(experiment):
    """A long run name wraps in its own column; every metric still reads whole (not "0.1…")."""
    import os
    import re

    out = subprocess.run(
        [sys.executable, "-m", "research.cli", "train", "--method", "unified_lora", *experiment, "method_args.r=4"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80"},  # a log file's width
    )
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    assert "Epoch 0: 100%" in log and "generate test: 100%" in log  # the progress bars
    for noise in ("💡 Tip", "TPU available", "FutureWarning", "DeprecationWarning", "is deprecated"):
        assert noise not in log, noise
    table = out.stdout[out.stdout.index("test metrics") :].splitlines()
    assert all(len(line) <= 80 for line in table)
    [row] = [line for line in table if "unified_lora" in line]
    assert len(re.findall(r"\b\d\.\d{3}\b", row)) == 7 and "…" not in "".join(table)
