"""Bad input ends in one clear error and changes nothing: the table of bad inputs.

Each kind of bad input runs through the public CLI in a process of its own (tests/preloaded_cli.py:
forked from one that imported the stack once) against a real MLflow store with finished runs,
registered versions, a routing table and an Optuna study. Each must exit 2 with one message that
names the file/row/field or the key, print no traceback, and leave the data, the store (runs,
registry, token cache, study) and the routing table byte-for-byte as they were, creating nothing.
A property test feeds generated rows to the dataset validator: it raises nothing but DataError."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from preloaded_cli import PreloadedCli

from research.data.domain import DAYS_OF_WEEK, DEVICES, TIMES_OF_DAY, WEATHERS
from research.data.schema import DataError, validated_frames


@dataclass
class World:
    experiment: list[str]  # key=value overrides: the data, the tiny base, the store
    tracking: list[str]  # the tracking.* overrides alone
    serving: list[str]  # tracking.* and base_model
    data: Path  # the dataset (Parquet)
    neutral: Path
    base: Path
    store: Path  # mlflow.db, artifacts, the token cache, optuna.db
    routing: Path  # a routing table: unified_lora promoted for all
    runs: dict[str, str]  # method -> a finished run id
    versions: dict[str, str]  # registered model -> version
    personas: list[dict]  # the dataset's rows, as JSON values
    dialogues: list[dict]


@pytest.fixture(scope="module")
def world(source_runs, data_root, base_dir, tmp_path_factory) -> World:
    import optuna

    from research.data.schema import load_dataset
    from research.models.base import base_fingerprint
    from research.recipes.experiment import load_config
    from research.tracking.registry import promote, register

    experiment, runs = source_runs
    cfg = load_config(None, experiment, "unified_lora")
    versions = {method: str(register(cfg.tracking.uri, run_id).version) for method, run_id in runs.items()}
    routing = tmp_path_factory.mktemp("world") / "routing"
    promote(cfg.tracking.uri, routing, "unified_lora", versions["unified_lora"], "all", base_fingerprint(str(base_dir)))
    store = Path(cfg.tracking.uri.removeprefix("sqlite:///")).parent
    optuna.create_study(study_name="existing", storage=f"sqlite:///{store / 'optuna.db'}")  # a sweep's default
    personas, dialogues = load_dataset(data_root / "personas")
    tracking = [o for o in experiment if o.startswith("tracking.")]
    return World(
        experiment=experiment,
        tracking=tracking,
        serving=[*tracking, f"base_model={base_dir}"],
        data=data_root / "personas",
        neutral=data_root / "neutral",
        base=base_dir,
        store=store,
        routing=routing,
        runs=runs,
        versions=versions,
        personas=personas.to_dicts(),
        dialogues=[{**d, "timestamp": d["timestamp"].isoformat()} for d in dialogues.to_dicts()],
    )


@pytest.fixture(scope="module")
def research(tmp_path_factory) -> PreloadedCli:
    return PreloadedCli(tmp_path_factory.mktemp("cli-logs"))


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and directory under `roots`: path -> content hash ("dir" for a directory)."""
    return {
        str(path): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
    }


# --- bad data files ---------------------------------------------------------------------


def write_jsonl(directory: Path, personas: list, dialogues: list) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("personas", personas), ("dialogues", dialogues)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def spoiled(change: Callable[[list, list], None]) -> Callable[[World, Path], Path]:
    """A dataset directory: the world's rows as JSONL after `change(personas, dialogues)`."""

    def make(w: World, d: Path) -> Path:
        personas, dialogues = copy.deepcopy(w.personas), copy.deepcopy(w.dialogues)
        change(personas, dialogues)
        return write_jsonl(d / "data", personas, dialogues)

    return make


def _set(rows_of: int, index: int, **values) -> Callable[[list, list], None]:
    def change(personas: list, dialogues: list) -> None:
        (personas, dialogues)[rows_of][index].update(values)

    return change


def _turn(index: int, **values) -> Callable[[list, list], None]:
    """Set fields of turn `index` of the first dialogue."""

    def change(personas: list, dialogues: list) -> None:
        dialogues[0]["turns"][index].update(values)

    return change


def _second_of_same_persona(dialogues: list) -> dict:
    return next(d for d in dialogues[1:] if d["persona_id"] == dialogues[0]["persona_id"])


def _same_moment(personas: list, dialogues: list) -> None:
    _second_of_same_persona(dialogues)["timestamp"] = dialogues[0]["timestamp"]
    _second_of_same_persona(dialogues)["day_of_week"] = dialogues[0]["day_of_week"]


def _other_day(personas: list, dialogues: list) -> None:
    day = dialogues[0]["day_of_week"]
    dialogues[0]["day_of_week"] = DAYS_OF_WEEK[(DAYS_OF_WEEK.index(day) + 1) % 7]


def _not_utf8(w: World, d: Path) -> Path:
    directory = write_jsonl(d / "data", w.personas, w.dialogues)
    lines = (directory / "dialogues.jsonl").read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"text": "', b'"text": "\xff\xfe', 1)
    (directory / "dialogues.jsonl").write_bytes(b"\n".join(lines))
    return directory


def _not_json(w: World, d: Path) -> Path:
    directory = write_jsonl(d / "data", w.personas, w.dialogues)
    lines = (directory / "dialogues.jsonl").read_text().split("\n")
    lines[1] = lines[1][:40]
    (directory / "dialogues.jsonl").write_text("\n".join(lines))
    return directory


def _unreadable_parquet(w: World, d: Path) -> Path:
    directory = d / "data"
    directory.mkdir()
    shutil.copy(w.data / "personas.parquet", directory)
    (directory / "dialogues.parquet").write_bytes(b"PAR1 this is not a Parquet file")
    return directory


def _both_formats(w: World, d: Path) -> Path:
    directory = write_jsonl(d / "data", w.personas, w.dialogues)
    shutil.copy(w.data / "personas.parquet", directory)
    return directory


def _many_problems(personas: list, dialogues: list) -> None:
    for dialogue in dialogues[:25]:
        dialogue["time_of_day"] = "midnight"


def _validate(make: Callable[[World, Path], Path]) -> Callable[[World, Path], list[str]]:
    return lambda w, d: ["data", "validate", str(make(w, d))]


ACTION = {"device": "lights", "parameter": "brightness", "value": "150"}
NAN_TEMPERATURE = spoiled(_set(1, 0, temperature_c=float("nan")))

DATA_CASES = [
    ("data: NaN temperature", _validate(NAN_TEMPERATURE), r"dialogues.jsonl row 1, field temperature_c: nan outside"),
    ("data: temperature out of range", _validate(spoiled(_set(1, 0, temperature_c=500))), r"row 1, field temperature_c: 500 outside -60\.\.60"),
    ("data: temperature as text", _validate(spoiled(_set(1, 0, temperature_c="warm"))), r"row 1, field temperature_c: must be a number, got 'warm'"),
    ("data: a 5 MB user turn", _validate(spoiled(_turn(0, text="a" * 5_000_000))), r"row 1, field turns\[0\]\.text: 5000000 characters, at most 2000"),
    ("data: empty turn text", _validate(spoiled(_turn(0, text="  "))), r"row 1, field turns\[0\]\.text: must be a non-empty string"),
    ("data: no dialogues", _validate(lambda w, d: write_jsonl(d / "data", w.personas, [])), r"dialogues.jsonl: no rows"),
    ("data: no personas", _validate(lambda w, d: write_jsonl(d / "data", [], w.dialogues)), r"personas.jsonl: no rows"),
    ("data: bytes not UTF-8", _validate(_not_utf8), r"dialogues.jsonl line 3: not UTF-8 text"),
    ("data: a line not JSON", _validate(_not_json), r"dialogues.jsonl row 2: not valid JSON"),
    ("data: duplicate dialogue id", _validate(spoiled(lambda p, d: d[1].update(dialogue_id=d[0]["dialogue_id"]))), r"row 2, field dialogue_id: duplicate"),
    ("data: duplicate persona id", _validate(spoiled(lambda p, d: p[1].update(persona_id=p[0]["persona_id"]))), r"personas.jsonl row 2, field persona_id: duplicate"),
    ("data: unknown persona", _validate(spoiled(_set(1, 0, persona_id="nobody"))), r"row 1, field persona_id: 'nobody' is not in the personas file"),
    ("data: roles not alternating", _validate(spoiled(_turn(1, role="user"))), r"row 1, field turns\[1\]\.role: expected 'assistant'"),
    ("data: action not an object", _validate(spoiled(_turn(1, devices=["lights"], actions=["lights on"]))), r"turns\[1\]\.actions\[0\]: must be an object with device, parameter and value"),
    ("data: action value out of range", _validate(spoiled(_turn(1, devices=["lights"], actions=[ACTION]))), r"turns\[1\]\.actions\[0\]\.value: 150 outside 0\.\.100"),
    ("data: unknown device", _validate(spoiled(_turn(1, devices=["oven"], actions=[]))), r"turns\[1\]\.devices\[0\]: 'oven' is not a device"),
    ("data: actions on a user turn", _validate(spoiled(_turn(0, devices=["lights"], actions=[{**ACTION, "value": "50"}]))), r"turns\[0\]: a user turn carries no devices or actions"),
    ("data: weekday not the timestamp's", _validate(spoiled(_other_day)), r"row 1, field day_of_week: .* but the timestamp .* is a"),
    ("data: two dialogues at one moment", _validate(spoiled(_same_moment)), r"persona persona_000 has another dialogue at"),
    ("data: timestamp not a date", _validate(spoiled(_set(1, 0, timestamp="yesterday"))), r"row 1, field timestamp: must be an ISO date-time, got 'yesterday'"),
    ("data: unknown weather", _validate(spoiled(_set(1, 0, weather="foggy"))), r"row 1, field weather: 'foggy' not one of"),
    ("data: persona without dialogues", _validate(spoiled(lambda p, d: d.__setitem__(slice(None), [x for x in d if x["persona_id"] != "persona_000"]))), r"persona persona_000 has no dialogues"),
    ("data: traits not an object", _validate(spoiled(_set(0, 0, traits="[1, 2]"))), r"personas.jsonl row 1, field traits: must be an object or null, got list"),
    ("data: unreadable Parquet", _validate(_unreadable_parquet), r"dialogues.parquet: not a readable Parquet file"),
    ("data: Parquet and JSONL side by side", _validate(_both_formats), r"both personas.parquet and personas.jsonl"),
    ("data: no such directory", lambda w, d: ["data", "validate", str(d / "nowhere")], r"nowhere: no such dataset directory"),
    ("data: every problem listed", _validate(spoiled(_many_problems)), r"invalid data \(25 problems\):(\n.*row \d+, field time_of_day: 'midnight'.*){20}\n\.\.\. and 5 more"),
    ("data import: bad data, nothing written", lambda w, d: ["data", "import", str(NAN_TEMPERATURE(w, d)), "--out", str(d / "imported")], r"field temperature_c: nan"),
]  # fmt: skip


# --- configs: training -------------------------------------------------------------------


def _train(*args: str, method: str = "unified_lora") -> Callable[[World, Path], list[str]]:
    return lambda w, d: ["train", "--method", method, *w.experiment, *args]


def _config_file(text: str | bytes) -> Callable[[World, Path], list[str]]:
    def make(w: World, d: Path) -> list[str]:
        path = d / "exp.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", "--method", "unified_lora", "--config", str(path), *w.experiment]

    return make


CONFIG_CASES = [
    ("config: negative epochs", _train("train.max_epochs=-3"), r"train\.max_epochs: -3 is not allowed \(at least 1\)"),
    ("config: zero lr", _train("train.lr=0"), r"train\.lr: 0\.0 is not allowed \(above 0\)"),
    ("config: NaN lr", _train("train.lr=nan"), r"train\.lr: nan is not allowed \(a finite number\)"),
    ("config: zero batch size", _train("train.batch_size=0"), r"train\.batch_size: 0 is not allowed \(at least 1\)"),
    ("config: fractions leave no training", _train("data.val_fraction=0.5", "data.test_fraction=0.5"), r"data\.val_fraction: 0\.5 is not allowed \(val_fraction \+ test_fraction below 1\)"),
    ("config: fraction above 1", _train("data.test_fraction=1.5"), r"data\.test_fraction: 1\.5 is not allowed \(at least 0, below 1\)"),
    ("config: zero LoRA rank", _train("method_args.r=0"), r"method_args\.r: 0 is not allowed \(at least 1\)"),
    ("config: dropout of 1", _train("method_args.dropout=1"), r"method_args\.dropout: 1\.0 is not allowed"),
    ("config: negative retrieval k", _train("method_args.k=-1", method="retrieval"), r"method_args\.k: -1 is not allowed \(at least 0\)"),
    ("config: unknown precision", _train("train.precision=fp8"), r"train\.precision: 'fp8' is not allowed \(allowed: bf16-mixed"),
    ("config: unknown key", _train("train.lrr=1"), r"unknown key train\.lrr \(allowed: max_epochs"),
    ("config: override not YAML", _train("train.max_epochs=["), r"train\.max_epochs: '\[' is not a value"),
    ("config: override not key=value", _train("train"), r"override 'train' is not key=value"),
    ("config: unknown method", lambda w, d: ["train", "--method", "magic", *w.experiment], r"method: 'magic' is not registered"),
    ("config: monitor not a metric", _train("train.monitor=val/bogus"), r"train\.monitor: 'val/bogus' is not a metric"),
    ("config: merge metric not a metric", _train("method_args.val_metric=bogus", method="moe_merge"), r"method_args\.val_metric: 'bogus' is not a metric"),
    ("config: YAML that does not parse", _config_file("train:\n  lr: [1, 2\n  max_epochs: 3\n"), r"exp\.yaml line \d+: not valid YAML"),
    ("config: YAML not a mapping", _config_file("- train\n- lr\n"), r"exp\.yaml: expected a mapping of config keys"),
    ("config: YAML not UTF-8", _config_file(b"train:\n  lr: 0.1 \xff\n"), r"exp\.yaml line 2: not UTF-8 text"),
    ("config: YAML with a bad value", _config_file("train:\n  warmup_ratio: 2\n"), r"train\.warmup_ratio: 2\.0 is not allowed \(at least 0, below 1\)"),
    ("config: a layer the base lacks", _train("method_args.target_modules=[no_such_layer]"), r"method_args\.target_modules: the base model has no Linear layer named 'no_such_layer'"),
    ("config: more clusters than personas", _train("method_args.clustering.k=99", method="cluster_lora"), r"method_args\.clustering\.k: 99 clusters for 6 personas"),
    ("config: data.dir missing", lambda w, d: [*_train()(w, d), f"data.dir={d / 'nowhere'}"], r"nowhere: no such dataset directory"),
    ("config: data.dir holds bad data", lambda w, d: [*_train()(w, d), f"data.dir={NAN_TEMPERATURE(w, d)}"], r"dialogues\.jsonl row 1, field temperature_c: nan"),
    ("config: base_model missing", lambda w, d: [*_train()(w, d), f"base_model={d / 'nowhere'}"], r"base model '.*nowhere' is not a local directory"),
    ("config: base_model not a model", lambda w, d: [*_train()(w, d), f"base_model={w.data}"], r"base model '.*' is not a Hugging Face model directory"),
    ("config: --seeds 0", _train("--seeds", "0"), r"argument --seeds: 0 is not allowed \(at least 1\)"),
    ("config: embedder missing", _train("eval.embedder=/nonexistent/embedder"), r"eval\.embedder '/nonexistent/embedder' is not a local directory"),
    ("config: cache_dir is a file", lambda w, d: (d / "file").write_text("x") and [*_train()(w, d), f"data.cache_dir={d / 'file'}"], r"data\.cache_dir: .*file is a file, not a directory"),
]  # fmt: skip


# --- sweep spaces and sweep arguments ------------------------------------------------------


def _sweep(*args: str, spec: str | None = None) -> Callable[[World, Path], list[str]]:
    def make(w: World, d: Path) -> list[str]:
        if spec is None:
            return ["sweep", "--method", "unified_lora", *args, *w.experiment]
        (d / "space.yaml").write_text(spec)
        return ["sweep", "--method", "unified_lora", "--spec", str(d / "space.yaml"), *args, *w.experiment]

    return make


SWEEP_CASES = [
    ("sweep: space not YAML", _sweep(spec="space:\n  train.lr: {type: float, low: 1\n"), r"space\.yaml line \d+: not valid YAML"),
    ("sweep: low above high", _sweep(spec="space:\n  train.lr: {type: float, low: 1.0e-2, high: 1.0e-4}\n"), r"space\.yaml: space\.train\.lr\.high: 0\.0001 is not allowed \(at least low"),
    ("sweep: unknown config key", _sweep(spec="space:\n  train.lrr: {type: float, low: 0.1, high: 0.2}\n"), r"space\.yaml: unknown key train\.lrr"),
    ("sweep: bound out of range", _sweep(spec="space:\n  train.max_epochs: {type: int, low: 0, high: 3}\n"), r"space\.yaml: train\.max_epochs: 0 is not allowed \(at least 1\)"),
    ("sweep: unknown parameter type", _sweep(spec="space:\n  train.lr: {type: normal, low: 0.1, high: 0.2}\n"), r"space\.train\.lr\.type: 'normal' is not allowed"),
    ("sweep: log from 0", _sweep(spec="space:\n  train.lr: {type: float, low: 0, high: 0.1, log: true}\n"), r"space\.train\.lr\.log: True is not allowed \(log needs low > 0\)"),
    ("sweep: objective on test", _sweep(spec="objective: test/param_f1\nspace: {}\n"), r"objective: 'test/param_f1' is not allowed \(must be a val/ metric"),
    ("sweep: unknown pruner", _sweep(spec="pruner: {name: hyperband}\nspace: {}\n"), r"pruner\.name: 'hyperband' is not allowed"),
    ("sweep: zero trials in the space", _sweep(spec="trials: 0\nspace: {}\n"), r"trials: 0 is not allowed \(at least 1\)"),
    ("sweep: no such space file", lambda w, d: ["sweep", "--method", "unified_lora", "--spec", str(d / "no.yaml"), *w.experiment], r"no\.yaml does not exist"),
    ("sweep: --trials 0", _sweep("--trials", "0"), r"argument --trials: 0 is not allowed \(at least 1\)"),
    ("sweep: --workers 0", _sweep("--workers", "0"), r"argument --workers: 0 is not allowed \(at least 1\)"),
    ("sweep: bad data, no study", lambda w, d: [*_sweep()(w, d), f"data.dir={NAN_TEMPERATURE(w, d)}"], r"field temperature_c: nan"),
    ("sweep: a layer the base lacks, no study", _sweep("method_args.target_modules=[nope]"), r"method_args\.target_modules: the base model has no Linear layer named 'nope'"),
]  # fmt: skip


# --- storage URLs ---------------------------------------------------------------------------

STORAGE_CASES = [
    ("storage: tracking URI not a store", _train("tracking.uri=bogus://x"), r"tracking\.uri: 'bogus://x' is not allowed \(sqlite:///PATH"),
    ("storage: sqlite URI without a path", _train("tracking.uri=sqlite://"), r"tracking\.uri: 'sqlite://' is not allowed"),
    ("storage: tracking server not answering", lambda w, d: ["compare", w.runs["unified_lora"], "--overrides", "tracking.uri=http://127.0.0.1:9"], r"tracking\.uri http://127\.0\.0\.1:9: no server answers there"),
    ("storage: --storage not a URL", _sweep("--storage", "bogus://x"), r"--storage 'bogus://x': not a storage URL"),
    ("storage: --storage journal without a path", _sweep("--storage", "journal:"), r"--storage 'journal:': not a storage URL"),
    ("storage: --storage server not answering", _sweep("--storage", "postgresql://nobody@127.0.0.1:9/db"), r"--storage postgresql://nobody@127\.0\.0\.1:9/db: no server answers there"),
]  # fmt: skip


# --- other commands' configs and arguments ---------------------------------------------------

COMMAND_CASES = [
    ("generate: zero personas", lambda w, d: ["data", "generate", "--out", str(d / "gen"), "personas=0"], r"personas: 0 is not allowed \(at least 1\)"),
    ("generate: intent weights of the wrong length", lambda w, d: ["data", "generate", "--out", str(d / "gen"), "neutral_intent_weights=1,2"], r"neutral_intent_weights: 2 values given, 9 needed"),
    ("generate: too few dialogues for a test split", lambda w, d: ["data", "generate", "--out", str(d / "gen"), "dialogues=3"], r"dialogues: 3 is not allowed \(dialogues x test_fraction at least 1\)"),
    ("generate: --out is a file", lambda w, d: (d / "taken").write_text("x") and ["data", "generate", "--out", str(d / "taken")], r"--out .*taken: is a file"),
    ("base: heads that do not divide the width", lambda w, d: ["base", "--data", str(w.neutral), "--out", str(d / "base"), "num_heads=3"], r"num_heads: 3 is not allowed \(divides hidden_size\)"),
    ("base: unknown preset", lambda w, d: ["base", "--from", "nothing"], r"--from 'nothing': no such preset"),
    ("cluster: more clusters than personas", lambda w, d: ["cluster", "--base-model", str(w.base), "--plot", str(d / "c.png"), f"data.dir={w.data}", f"data.cache_dir={w.store / 'cache'}", "k=99"], r"k: 99 clusters for 6 personas"),
    ("cluster: plot format", lambda w, d: ["cluster", "--base-model", str(w.base), "--plot", str(d / "c.xyz"), f"data.dir={w.data}", f"data.cache_dir={w.store / 'cache'}"], r"--plot .*c\.xyz: xyz image format"),
    ("probe: zero speakers", lambda w, d: ["probe", "--base", str(w.base), "--speakers", "0"], r"argument --speakers: 0 is not allowed"),
    ("ui: port out of range", lambda w, d: ["ui", "--port", "70000", *w.tracking], r"argument --port: 70000 is not allowed \(1\.\.65535\)"),
    ("compare: unknown metric", lambda w, d: ["compare", w.runs["per_persona_lora"], "--metric", "bogus", "--overrides", *w.tracking], r"--metric: 'bogus' is not a metric"),
    ("report: unknown metric", lambda w, d: ["report", "--metric", "bogus", "--out", str(d / "reports"), "--overrides", *w.tracking], r"--metric: 'bogus' is not a metric"),
]  # fmt: skip


# --- run ids, the registry and the routing table -----------------------------------------------


def _spoiled_routing(action: str, spoil: Callable[[Path], object]) -> Callable[[World, Path], list[str]]:
    """`research routing ACTION` on a copy of the world's routing table after `spoil(copy)`."""

    def make(w: World, d: Path) -> list[str]:
        shutil.copytree(w.routing, d / "routing", ignore=shutil.ignore_patterns(".lock"))
        spoil(d / "routing")
        return ["routing", action, "--routing", str(d / "routing")]

    return make


def _edited_by_hand(routing: Path) -> None:
    table = json.loads((routing / "table.json").read_text())
    table["routes"]["persona_000"] = {"model": "x", "version": "1", "adapter": ""}
    (routing / "table.json").write_text(json.dumps(table))


def _requests(w: World, d: Path, rows: list | str) -> Path:
    path = d / "requests.jsonl"
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _predict(rows: list | str, output: str = "out.jsonl") -> Callable[[World, Path], list[str]]:
    def make(w: World, d: Path) -> list[str]:
        path = _requests(w, d, rows)
        return ["predict", "--input", str(path), "--output", str(d / output), "--routing", str(w.routing), *w.serving]

    return make


REQUEST = {
    "persona_id": "persona_000",
    "time_of_day": "evening",
    "weather": "rainy",
    "temperature_c": 12.0,
    "day_of_week": "Monday",
    "turns": [{"role": "user", "text": "lights on"}],
}

REGISTRY_CASES = [
    ("run id: compare an unknown run", lambda w, d: ["compare", "0000ffff", "--overrides", *w.tracking], r"run id '0000ffff': no run in experiment"),
    ("run id: register an unknown run", lambda w, d: ["register", "f" * 32, *w.tracking], r"run f{32} does not exist"),
    ("run id: hybrid on an unknown unified run", _train("method_args.unified_run=ffffffff", method="hybrid_lora"), r"method_args\.unified_run: run id 'ffffffff': no run"),
    ("run id: selective routing on no candidates", _train(method="selective_routing"), r"method_args\.candidate_runs: name at least one finished run"),
    ("registry: register with a bad alias", lambda w, d: ["register", w.runs["unified_lora"], "--alias", "bad alias", *w.tracking], r"--alias 'bad alias': Invalid alias name"),
    ("registry: promote an unknown version", lambda w, d: ["promote", "unified_lora", "999", "--routing", str(w.routing), *w.serving], r"registered model unified_lora has no version 999"),
    ("registry: promote for no persona", lambda w, d: ["promote", "unified_lora", w.versions["unified_lora"], "--personas", "", "--routing", str(w.routing), *w.serving], r"--personas: name at least one persona"),
    ("registry: promote a persona the adapter lacks", lambda w, d: ["promote", "per_persona_lora", w.versions["per_persona_lora"], "--personas", "nobody", "--routing", str(w.routing), *w.serving], r"has no adapter for persona nobody"),
    ("routing: table not JSON", _spoiled_routing("show", lambda r: (r / "table.json").write_text('{"revision": 1,\n "rou')), r"table\.json line 2 is corrupted"),
    ("routing: table edited by hand", _spoiled_routing("show", _edited_by_hand), r"table\.json is corrupted \(checksum or fields do not match\)"),
    ("routing: history revision damaged", _spoiled_routing("history", lambda r: (r / "history" / "000001.json").write_bytes(b"\xff")), r"000001\.json line 1: not UTF-8 text"),
    ("routing: roll back to an unknown revision", lambda w, d: ["routing", "rollback", "--to", "99", "--routing", str(w.routing), *w.tracking], r"no routing revision 99 to roll back to \(have: \[1\]\)"),
    ("routing: roll back with no table", lambda w, d: ["routing", "rollback", "--routing", str(d / "empty"), *w.tracking], r"no routing revision to roll back to in .*empty"),
    ("routing: --to 0", lambda w, d: ["routing", "rollback", "--to", "0", "--routing", str(w.routing)], r"argument --to: 0 is not allowed \(at least 1\)"),
    ("routing: --routing is a file", lambda w, d: (d / "file").write_text("x") and ["routing", "show", "--routing", str(d / "file")], r"--routing .*file: not a directory"),
    ("chat: an empty message", lambda w, d: ["chat", "--persona", "persona_000", " ", "--routing", str(w.routing), *w.serving], r"the message row 1, field turns\[0\]\.text: must be a non-empty string"),
    ("predict: input not JSON", _predict("this is not JSON\n"), r"requests\.jsonl row 1: not valid JSON"),
    ("predict: input ends with a reply", _predict([{**REQUEST, "turns": [*REQUEST["turns"], {"role": "assistant", "text": "ok"}]}]), r"requests\.jsonl row 1, field turns: must end with a user turn"),
    ("predict: input with NaN temperature", _predict([REQUEST, {**REQUEST, "temperature_c": float("nan")}]), r"requests\.jsonl row 2, field temperature_c: nan outside"),
    ("predict: input missing a field", _predict([{k: v for k, v in REQUEST.items() if k != "weather"}]), r"requests\.jsonl row 1, field weather: None not one of"),
    ("predict: no such input", lambda w, d: ["predict", "--input", str(d / "none.jsonl"), "--output", str(d / "out.jsonl"), "--routing", str(w.routing), *w.serving], r"none\.jsonl does not exist"),
    ("predict: output format", _predict([REQUEST], output="out.txt"), r"--output .*out\.txt: predictions are written as a \.jsonl or \.parquet file"),
]  # fmt: skip

CASES = [*DATA_CASES, *CONFIG_CASES, *SWEEP_CASES, *STORAGE_CASES, *COMMAND_CASES, *REGISTRY_CASES]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(world, research, make, message, tmp_path):
    case = tmp_path / "case"  # the command's working directory and its input files
    case.mkdir()
    argv = make(world, case)
    roots = (world.data.parent, world.store, world.routing.parent, case)
    before = snapshot(*roots)
    result = research(*argv, cwd=case)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert snapshot(*roots) == before


def test_the_table_covers_at_least_40_kinds():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--method", "unified_lora", "train.max_epochs=-3"], r"^error: train\.max_epochs: -3 is not allowed"),
        (["data", "validate", "{nan}"], r"^error: invalid data \(1 problem\):\n.*temperature_c: nan outside"),
    ],
)
def test_a_plain_python_process_answers_as_the_preloaded_one(world, tmp_path, args, message):
    """The preloaded runner is `python -m research.cli` without the repeated import: the same
    exit code and one paragraph on stderr."""
    args = [a.replace("{nan}", str(NAN_TEMPERATURE(world, tmp_path))) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr and "\n\n" not in result.stderr.strip()


# --- the validator, fed generated rows -----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PARAMETERS = sorted({p for params in DEVICES.values() for p in params})
NAMES = st.text(alphabet="abcxyz_0123", min_size=1, max_size=5)


def one_in(draw, n: int) -> bool:
    """True about once in `n` draws (Hypothesis favours the bounds of a range, not its first element)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


def sometimes_spoiled(draw, valid: dict, n: int) -> dict:
    return draw(spoiled_row(valid)) if one_in(draw, n) else valid


@st.composite
def spoiled_row(draw, valid: dict) -> dict:
    """`valid`, with some fields dropped or replaced by any JSON value."""
    row = dict(valid)
    for key in draw(st.sets(st.sampled_from(sorted(valid)), min_size=1, max_size=len(valid))):
        if draw(st.booleans()):
            row.pop(key)
        else:
            row[key] = draw(JSON)
    return row


@st.composite
def action(draw) -> dict:
    device = draw(st.sampled_from(sorted(DEVICES)))
    parameter = draw(st.sampled_from(PARAMETERS if one_in(draw, 8) else sorted(DEVICES[device])))
    allowed = DEVICES[device].get(parameter, ("x",))
    values = st.integers(allowed[0], allowed[1]) if isinstance(allowed[0], int) else st.sampled_from(allowed)
    return sometimes_spoiled(draw, {"device": device, "parameter": parameter, "value": draw(values)}, 12)


@st.composite
def turn(draw, role: str) -> dict:
    actions = draw(st.lists(action(), max_size=2)) if role == "assistant" else []
    devices = sorted({a["device"] for a in actions if isinstance(a.get("device"), str)})
    text = draw(st.text(min_size=1, max_size=20).filter(str.strip))
    valid = {"role": role, "text": text, "devices": devices, "actions": actions}
    return sometimes_spoiled(draw, valid, 16)


@st.composite
def dialogue(draw, persona_id: str, number: int) -> dict:
    moment = draw(st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.none() | st.just(UTC)))
    valid = {
        "dialogue_id": f"{draw(NAMES)}-{number}",
        "persona_id": persona_id,
        "timestamp": draw(st.sampled_from([moment, moment.isoformat()])),
        "time_of_day": draw(st.sampled_from(TIMES_OF_DAY)),
        "weather": draw(st.sampled_from(WEATHERS)),
        "temperature_c": draw(st.floats(-60, 60) | st.integers(-60, 60)),
        "day_of_week": moment.strftime("%A"),
        "turns": [draw(turn("user" if t % 2 == 0 else "assistant")) for t in range(draw(st.integers(2, 4)))],
    }
    return sometimes_spoiled(draw, valid, 10)


@st.composite
def dataset(draw) -> tuple[list, list]:
    """Rows that are valid but for a few spoiled fields, rows, or values (NaN, infinities
    and any other JSON value included)."""
    ids = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    persona = {"name": "Ana", "description": "likes jazz", "traits": None, "preferences": '{"genre": "jazz"}'}
    personas = [sometimes_spoiled(draw, {"persona_id": p, **persona}, 12) for p in ids]
    owners = [*ids, *draw(st.lists(st.sampled_from(ids) | NAMES, max_size=2))]
    dialogues = [draw(dialogue(owner, n)) for n, owner in enumerate(owners)]
    if one_in(draw, 10):  # a row that is any JSON value at all
        dialogues.insert(draw(st.integers(0, len(dialogues))), draw(JSON))
    return personas, dialogues


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset())
def test_the_dataset_validator_raises_nothing_but_its_own_error(rows):
    personas, dialogues = rows
    try:
        persona_frame, dialogue_frame = validated_frames(
            list(enumerate(personas, start=1)), list(enumerate(dialogues, start=1))
        )
    except DataError as err:
        assert str(err).startswith("invalid data (")
        return
    assert (persona_frame.height, dialogue_frame.height) == (len(personas), len(dialogues))
