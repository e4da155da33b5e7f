"""`research report` / `make report`: the study's table from MLflow, for every method against
unified, beside the simulator's anchors and the instrument (unified told the resolved settings,
and told the raw preferences).

Which runs: for each method sharing unified's lineage (data, splits, prompt settings,
base), its latest seeds parent (`research train --seeds N`: per-persona means across seeds)
if it has one, else its latest finished run; never a sweep trial unless named; or the runs
named. The instrument rows are the latest run tagged `instrument=told_resolved` and the latest
tagged `instrument=told_preferences` on the same data, splits and base (their prompts differ
by design). Named runs that hold personas out of training (method_args.held_out) are compared
apart, on those personas, against the named unified_lora run with the same share ("New
personas"). Written as Markdown and a
self-contained HTML page under `reports/`, with plots, and logged as a `report` run.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from research.config import ConfigError, TrackingConfig
from research.evaluation.metrics import METRICS, METRICS_VERSION
from research.evaluation.statistics import compare, headroom_captured, holm, verdict
from research.recipes.analysis import check_comparable, per_persona_table, true_preferences_anchor
from research.recipes.run import INSTRUMENT_ROWS
from research.recipes.tables import SHORT
from research.tracking.runs import experiment_id, find_run, iter_runs
from research.tracking.sources import LINEAGE

# the study's columns: every metric but the param P/R halves of F1
COLUMNS = ("embedding_similarity", "device_precision", "device_recall", "numerical_precision", "param_f1")


@dataclass
class Row:
    name: str
    run: object
    per_persona: pl.DataFrame  # one split (test, or held_out/test): persona_id, every metric


def _latest(client, experiment: str, filter_string: str, keep=lambda run: True):
    return [run for run in iter_runs(client, experiment, filter_string, ("attributes.start_time DESC",)) if keep(run)]


def _own_run(run) -> bool:
    """A method's own run or seeds parent: not a sweep trial, a seed's child run or the instrument."""
    return not {"trial", "instrument", "mlflow.parentRunId"} & run.data.tags.keys()


def _preferred(runs: list) -> list:
    """Newest first, but a method's seeds parent (per-persona means across seeds) before its single runs."""
    return sorted(runs, key=lambda run: ("aggregate" not in run.data.tags, -run.info.start_time))


def row(run, name: str | None = None, split: str = "test") -> Row:
    """A run's row of `split`, named `name` or after its method."""
    table = per_persona_table(run.info.run_id).filter(pl.col("split") == split).drop("split")
    return Row(name or run.data.tags["method"], run, table)


def holds_out(run) -> bool:
    """Whether the run held personas out of training (method_args.held_out): its lineage differs
    from the study's, and its held-out personas are compared apart (held_out_section)."""
    return "held_out=" in run.data.tags.get("splits", "")


def select_runs(client, experiment: str, run_ids: list[str]) -> tuple[Row, list[Row], list[Row]]:
    """(unified, the other methods, the instrument's rows) as described in the module docstring."""
    finished = "attributes.status = 'FINISHED'"
    told = []
    unified_runs = _latest(
        client, experiment, f"{finished} and tags.method = 'unified_lora'", lambda r: _own_run(r) and not holds_out(r)
    )
    candidates = _preferred(unified_runs)
    if run_ids:  # named: rows are named after their runs; instrument runs are the instrument rows
        named = [find_run(client, experiment, run_id) for run_id in run_ids]
        told = [row(r, r.info.run_name) for r in named if "instrument" in r.data.tags]
        named = [r for r in named if "instrument" not in r.data.tags]
        unified = next((r for r in named if r.data.tags.get("method") == "unified_lora"), None)
        candidates = [unified] if unified else candidates
    if not candidates:
        raise ConfigError(f"experiment {experiment}: no finished unified_lora run to report against")
    unified = candidates[0]
    if run_ids:
        others = [row(r, r.info.run_name) for r in named if r.info.run_id != unified.info.run_id]
    else:
        same = "".join(f" and tags.{key} = '{unified.data.tags[key]}'" for key in LINEAGE if key in unified.data.tags)
        latest: dict[str, object] = {}
        for run in _preferred(_latest(client, experiment, f"{finished}{same}", _own_run)):
            latest.setdefault(run.data.tags["method"], run)
        others = [row(run) for method, run in sorted(latest.items()) if method != "unified_lora"]
        same_data = "".join(
            f" and tags.{key} = '{unified.data.tags[key]}'"
            for key in LINEAGE
            if key != "prompt" and key in unified.data.tags
        )
        for tag, name in INSTRUMENT_ROWS.values():
            if latest_told := _latest(client, experiment, f"{finished} and tags.instrument = '{tag}'{same_data}"):
                told.append(row(latest_told[0], name))
    for other in others:
        check_comparable(other.run, unified)
    return row(unified), others, told


def anchors(run) -> dict | None:
    meta = Path(run.data.params.get("data.dir", ""), "meta.json")
    if not meta.exists():
        return None
    headroom = json.loads(meta.read_text()).get("oracle_headroom", {})
    return headroom if headroom.get("metrics_version") == METRICS_VERSION else None


def statistics(unified: Row, others: list[Row], metric: str) -> list[dict]:
    """Per method: compare() on `metric`, Holm over the methods, the bar's verdict."""
    results = [compare(_split(other), _split(unified), metric) for other in others]
    for result, p in zip(results, holm([r["p_value"] for r in results]), strict=True):
        result["p_holm"] = p
        result["missed"] = verdict(result, p)
    return results


def _split(row: Row) -> pl.DataFrame:
    return row.per_persona.with_columns(split=pl.lit("test"))


def _mean(row: Row, metric: str) -> float:
    return float(row.per_persona[metric].mean())


HEADER = ["run", *(SHORT[m] for m in COLUMNS), "improved", "p (Holm)", "95% CI", "min / max", "headroom"]
HEADER += ["trainable", "fit s", "eval s", "verdict"]


def _line(cells: list[str]) -> str:
    return "| " + " | ".join([*cells, *[""] * (len(HEADER) - len(cells))]) + " |"


def _scores(row: Row, unified: Row, delta: bool) -> list[str]:
    means = [(_mean(row, m), _mean(unified, m)) for m in COLUMNS]
    return [f"{v:.3f} ({v - u:+.3f})" if delta else f"{v:.3f}" for v, u in means]


def _cost(run) -> list[str]:
    metrics = run.data.metrics
    return [f"{metrics.get('params/trainable', float('nan')):,.0f}"] + [
        f"{metrics.get(f'time/{k}_s', float('nan')):.0f}" for k in ("fit", "eval")
    ]


def method_lines(unified: Row, others: list[Row], metric: str, true_anchor: float | None) -> list[str]:
    """The table's unified row, then each method's against it (statistics on `metric`)."""
    named = f"{unified.name} ({unified.run.info.run_id[:8]})"
    lines = [_line([named, *_scores(unified, unified, False), "", "", "", "", "", *_cost(unified.run)])]
    for other, result in zip(others, statistics(unified, others, metric), strict=True):
        share = headroom_captured(result, true_anchor)
        lines.append(
            _line(
                [
                    f"{other.name} ({other.run.info.run_id[:8]})",
                    *_scores(other, unified, True),
                    f"{result['improved_share']:.0%}",
                    f"{result['p_holm']:.2g}",
                    f"[{result['ci95_low']:+.3f}, {result['ci95_high']:+.3f}]",
                    f"{result['min_persona']:.3f} / {float(other.per_persona[metric].max()):.3f}",
                    "-" if share is None else f"{share:.0%}",
                    *_cost(other.run),
                    "clears the bar" if not result["missed"] else "misses: " + "; ".join(result["missed"]),
                ]
            )
        )
    return lines


def markdown(unified: Row, others: list[Row], told: list[Row], headroom: dict | None, metric: str) -> str:
    runs = [unified.run, *(r.run for r in others), *(r.run for r in told)]
    newest = time.strftime("%Y-%m-%d", time.gmtime(max(r.info.start_time for r in runs) / 1000))
    tags = unified.run.data.tags
    lines = [
        f"# persona-lab report: methods against `unified_lora`, test/{metric}",
        "",
        f"Dataset {tags.get('dataset')}, base model {tags.get('base_model')} (fingerprint "
        f"{tags.get('base_fingerprint')}), code {tags.get('git_sha', 'unknown')[:12]}; runs made up to {newest} "
        "(UTC). Each row names its run: `research compare RUN_ID` and the MLflow UI show it in full.",
        "",
        f"Means over personas (test split), deltas to unified in parentheses. Per-persona statistics on {metric}: "
        "share of personas improved, paired t-test with Holm's correction over the methods, bootstrap 95% CI of "
        "the mean difference, the method's worst and best persona, and the share of the gap from unified to the "
        "true-preferences anchor it closes (headroom). The study's bar: >60% improved, mean >= +0.03, min "
        "persona > 0.70, p < 0.05.",
        "",
        _line(HEADER),
        "|" + "---|" * len(HEADER),
    ]
    for name in ("true_preferences", "population_average") if headroom else ():
        lines.append(
            _line([f"simulator anchor: {name.replace('_', ' ')}", *(f"{headroom[name][m]:.3f}" for m in COLUMNS)])
        )
    for row in told:
        named = f"**instrument**: {row.name} ({row.run.info.run_id[:8]})"
        lines.append(_line([named, *_scores(row, unified, True), "", "", "", "", "", *_cost(row.run)]))
    lines += method_lines(unified, others, metric, headroom["true_preferences"][metric] if headroom else None)
    if told and headroom:
        gaps = ", ".join(f"{row.name} {headroom['true_preferences'][metric] - _mean(row, metric):.3f}" for row in told)
        lines += [
            "",
            f"Below the true-preferences anchor on {metric}, the instrument: {gaps}. Told the resolved settings, "
            "a perfect reader reaches the anchor; told the raw preferences, the model must also do the context "
            "arithmetic. A method's gain is bounded by what this base model can do with what it is given.",
        ]
    return "\n".join(lines) + "\n"


def held_out_section(client, experiment: str, run_ids: list[str], metric: str) -> str:
    """The runs that held personas out of training, on those personas' test dialogues, against
    the unified_lora run among them (same held-out share, so the same personas)."""
    if not run_ids:
        return ""
    runs = [find_run(client, experiment, run_id) for run_id in run_ids]
    unified = next((r for r in runs if r.data.tags.get("method") == "unified_lora"), None)
    if unified is None:
        raise ConfigError("runs that hold personas out need a unified_lora run with the same held_out beside them")
    split = "held_out/test"
    others = [row(r, r.info.run_name, split) for r in runs if r is not unified]
    for other in others:
        check_comparable(other.run, unified)
    base = row(unified, unified.info.run_name, split)
    lines = [
        "",
        f"## New personas: {len(base.per_persona)} held out of training",
        "",
        f"Runs that never trained on these personas (splits {unified.data.tags['splits']}), scored on their test "
        f"dialogues ({split}), against {base.name}; columns as above.",
        "",
        _line(HEADER),
        "|" + "---|" * len(HEADER),
    ]
    return "\n".join(lines + method_lines(base, others, metric, true_preferences_anchor(unified, metric, split))) + "\n"


def plots(unified: Row, others: list[Row], told: list[Row], metric: str) -> dict[str, bytes]:
    """PNG bytes: per-persona distributions, per-persona gain over unified, quality vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [unified, *others, *told]
    figures = {}
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    ax.boxplot([row.per_persona[metric].to_numpy() for row in rows], tick_labels=[row.name for row in rows])
    ax.set_ylabel(f"test/{metric} per persona")
    ax.tick_params(axis="x", rotation=30)
    figures["distributions.png"] = fig
    fig, ax = plt.subplots(figsize=(7, 4))
    base = dict(zip(unified.per_persona["persona_id"], unified.per_persona[metric], strict=True))
    for row in [*others, *told]:
        gains = np.sort(
            [v - base[p] for p, v in zip(row.per_persona["persona_id"], row.per_persona[metric], strict=True)]
        )
        ax.plot(np.linspace(0, 1, len(gains)), gains, label=row.name)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("share of personas (sorted by gain)")
    ax.set_ylabel(f"gain over unified, test/{metric}")
    ax.legend(fontsize=8)
    figures["gain_over_unified.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        fit = row.run.data.metrics.get("time/fit_s", 0.0)
        ax.scatter(fit, _mean(row, metric))
        ax.annotate(row.name, (fit, _mean(row, metric)), fontsize=8)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(f"test/{metric}, mean over personas")
    figures["quality_vs_cost.png"] = fig
    out = {}
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=110)
        out[name] = buffer.getvalue()
    plt.close("all")
    return out


def html(text: str, images: dict[str, bytes]) -> str:
    """A self-contained page: the Markdown table as HTML, the plots inline."""
    from markdown_it import MarkdownIt  # rich's Markdown parser, already installed

    body = MarkdownIt("commonmark").enable("table").render(text)
    pictures = "".join(
        f'<h3>{name.removesuffix(".png").replace("_", " ")}</h3><img src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}">'
        for name, data in images.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    )
    head = f"<head><meta charset='utf-8'><title>persona-lab report</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{body}{pictures}</body></html>"


def tag_key(text: str) -> str:
    """`text` as an MLflow tag key: a run named after its overrides ("unified_lora train.lr=1e-3")
    has characters a key may not hold."""
    return re.sub(r"[^\w\-. :/]", "_", text)


def build_report(tracking: TrackingConfig, run_ids: list[str], metric: str, out: Path) -> Path:
    """Write OUT/report.md, OUT/report.html and the plots; log them as a `report` run."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: {metric!r} is not a metric (allowed: {', '.join(METRICS)})")
    experiment = experiment_id(tracking)
    client = mlflow.tracking.MlflowClient()
    held_out = [run_id for run_id in run_ids if holds_out(find_run(client, experiment, run_id))]
    if run_ids and len(held_out) == len(run_ids):
        raise ConfigError("every run named holds personas out: name a unified_lora run that holds none out too")
    unified, others, told = select_runs(client, experiment, [r for r in run_ids if r not in held_out])
    text = markdown(unified, others, told, anchors(unified.run), metric)
    text += held_out_section(client, experiment, held_out, metric)
    images = plots(unified, others, told, metric)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html(text, images))
    for name, data in images.items():
        (out / name).write_bytes(data)
    runs = [unified, *others, *told]
    with mlflow.start_run(experiment_id=experiment, run_name=f"report {metric}", tags={"report": "true"}):
        mlflow.set_tags({tag_key(f"report.{row.name}"): row.run.info.run_id for row in runs})
        if held_out:  # the rows of the "New personas" table
            mlflow.set_tag("report.held_out", ",".join(held_out))
        mlflow.log_artifacts(str(out), "report")
    return out / "report.html"
