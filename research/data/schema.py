"""Dataset schema, validation, atomic writing, loading and time-ordered splits.

A dataset is a directory with `personas.{parquet,jsonl}` and
`dialogues.{parquet,jsonl}`. Users bring their own data in the same schema;
every row is validated and each problem is reported by file, row and field.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import polars as pl

from research.data.domain import DAYS_OF_WEEK, DEVICES, NUMERIC_PARAMETERS, TIMES_OF_DAY

ACTION = pl.Struct({"device": pl.String, "parameter": pl.String, "value": pl.String})
TURN = pl.Struct({"role": pl.String, "text": pl.String, "devices": pl.List(pl.String), "actions": pl.List(ACTION)})
PERSONA_SCHEMA = {
    "persona_id": pl.String,
    "name": pl.String,
    "description": pl.String,
    "traits": pl.String,
    "preferences": pl.String,  # JSON objects: free-form per dataset
}
DIALOGUE_SCHEMA = {
    "dialogue_id": pl.String,
    "persona_id": pl.String,
    "timestamp": pl.Datetime("us"),
    "time_of_day": pl.String,
    "weather": pl.String,
    "temperature_c": pl.Float64,
    "day_of_week": pl.String,
    "turns": pl.List(TURN),
}
MAX_REPORTED_ERRORS = 20


class DataError(ValueError):
    """Invalid input data; the message names file, row and field of each problem."""


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".parquet", ".jsonl"):
        if (directory / f"{stem}{suffix}").exists():
            return directory / f"{stem}{suffix}"
    raise FileNotFoundError(
        f"{directory}: no {stem}.parquet or {stem}.jsonl (generate one with `research data generate`)"
    )


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pl.read_parquet(path).to_dicts()
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path} row {line_no}: not valid JSON ({err.msg})") from None
    return rows


def _check_persona(row: dict, errors: list[str]) -> None:
    for field in ("persona_id", "name", "description"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            errors.append(f"field {field}: must be a non-empty string, got {row.get(field)!r}")
    for field in ("traits", "preferences"):
        value = row.get(field)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                errors.append(f"field {field}: not a JSON object")
                continue
        if value is not None and not isinstance(value, dict):
            errors.append(f"field {field}: must be an object or null, got {type(value).__name__}")


def _check_value(device: str, parameter: str, value) -> str | None:
    allowed = DEVICES[device][parameter]
    if parameter in NUMERIC_PARAMETERS:
        try:
            number = int(str(value))
        except ValueError:
            return f"{value!r} is not an integer"
        return None if allowed[0] <= number <= allowed[1] else f"{number} outside {allowed[0]}..{allowed[1]}"
    return None if value in allowed else f"{value!r} not one of {', '.join(allowed)}"


def _check_turns(turns, errors: list[str]) -> None:
    if not isinstance(turns, list) or not turns:
        errors.append("field turns: must be a non-empty list")
        return
    for t, turn in enumerate(turns):
        where = f"field turns[{t}]"
        expected = "user" if t % 2 == 0 else "assistant"
        if not isinstance(turn, dict):
            errors.append(f"{where}: must be an object")
            continue
        if turn.get("role") != expected:
            errors.append(
                f"{where}.role: expected {expected!r} (turns alternate, user first), got {turn.get('role')!r}"
            )
        if not isinstance(turn.get("text"), str) or not turn["text"].strip():
            errors.append(f"{where}.text: must be a non-empty string")
        for d, device in enumerate(turn.get("devices") or []):
            if device not in DEVICES:
                errors.append(f"{where}.devices[{d}]: {device!r} is not a device (allowed: {', '.join(DEVICES)})")
        for a, action in enumerate(turn.get("actions") or []):
            device, parameter = action.get("device"), action.get("parameter")
            if device not in DEVICES:
                errors.append(
                    f"{where}.actions[{a}].device: {device!r} is not a device (allowed: {', '.join(DEVICES)})"
                )
            elif parameter not in DEVICES[device]:
                errors.append(
                    f"{where}.actions[{a}].parameter: {parameter!r} is not a parameter of {device} "
                    f"(allowed: {', '.join(DEVICES[device])})"
                )
            elif problem := _check_value(device, parameter, action.get("value")):
                errors.append(f"{where}.actions[{a}].value: {problem}")
    if len(turns) < 2:
        errors.append("field turns: needs at least one assistant turn")


def _check_dialogue(row: dict, persona_ids: set[str], errors: list[str]) -> None:
    for field in ("dialogue_id", "persona_id", "weather"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            errors.append(f"field {field}: must be a non-empty string, got {row.get(field)!r}")
    if isinstance(row.get("persona_id"), str) and row["persona_id"] not in persona_ids:
        errors.append(f"field persona_id: {row['persona_id']!r} is not in the personas file")
    timestamp = row.get("timestamp")
    if isinstance(timestamp, str):
        try:
            row["timestamp"] = datetime.fromisoformat(timestamp)
        except ValueError:
            errors.append(f"field timestamp: {timestamp!r} is not an ISO date-time")
    elif not isinstance(timestamp, datetime):
        errors.append(f"field timestamp: must be an ISO date-time, got {timestamp!r}")
    if row.get("time_of_day") not in TIMES_OF_DAY:
        errors.append(f"field time_of_day: {row.get('time_of_day')!r} not one of {', '.join(TIMES_OF_DAY)}")
    if row.get("day_of_week") not in DAYS_OF_WEEK:
        errors.append(f"field day_of_week: {row.get('day_of_week')!r} not one of {', '.join(DAYS_OF_WEEK)}")
    if isinstance(row.get("temperature_c"), bool) or not isinstance(row.get("temperature_c"), (int, float)):
        errors.append(f"field temperature_c: must be a number, got {row.get('temperature_c')!r}")
    _check_turns(row.get("turns"), errors)


def _validated(path: Path, rows: list[dict], check, key: str) -> list[dict]:
    problems, seen = [], set()
    for i, row in enumerate(rows, start=1):
        errors: list[str] = []
        if not isinstance(row, dict):
            errors.append("not a JSON object")
        else:
            check(row, errors)
            if row.get(key) in seen:
                errors.append(f"field {key}: duplicate {row[key]!r}")
            seen.add(row.get(key))
        problems += [f"{path} row {i}, {e}" for e in errors]
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED_ERRORS} more" if len(problems) > MAX_REPORTED_ERRORS else ""
        raise DataError("invalid data:\n" + "\n".join(problems[:MAX_REPORTED_ERRORS]) + more)
    return rows


def load_dataset(directory: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validated (personas, dialogues) from a dataset directory (Parquet or JSONL)."""
    directory = Path(directory)
    persona_path, dialogue_path = _find(directory, "personas"), _find(directory, "dialogues")
    personas = _validated(persona_path, _read_rows(persona_path), _check_persona, "persona_id")
    ids = {p["persona_id"] for p in personas}
    dialogues = _validated(
        dialogue_path, _read_rows(dialogue_path), lambda r, e: _check_dialogue(r, ids, e), "dialogue_id"
    )
    for p in personas:
        for field in ("traits", "preferences"):
            if p.get(field) is not None and not isinstance(p[field], str):
                p[field] = json.dumps(p[field], sort_keys=True)
    for d in dialogues:
        for turn in d["turns"]:
            turn.setdefault("devices", [])
            turn.setdefault("actions", [])
            turn["actions"] = [{**a, "value": str(a["value"])} for a in turn["actions"] or []]
    persona_df = pl.DataFrame(personas, schema=PERSONA_SCHEMA)
    dialogue_df = pl.DataFrame(dialogues, schema=DIALOGUE_SCHEMA).sort("persona_id", "timestamp", "dialogue_id")
    return persona_df, dialogue_df


def write_dataset(directory: str | Path, personas: pl.DataFrame, dialogues: pl.DataFrame, meta: dict) -> None:
    """Write all files or none: build in a temporary sibling directory, then rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        personas.write_parquet(staging / "personas.parquet")
        dialogues.write_parquet(staging / "dialogues.parquet")
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fingerprint(directory: str | Path) -> str:
    """Content hash of a dataset's rows (not of meta.json, nor of the files' bytes, which
    carry the writer's library version): the same data in Parquet or JSONL, written by
    any polars, has the same fingerprint."""
    files = [_find(Path(directory), stem) for stem in ("personas", "dialogues")]
    return _row_hash(tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.cache
def _row_hash(files: tuple) -> str:  # keyed by path, mtime and size: a rewritten file is hashed again
    personas, dialogues = load_dataset(Path(files[0][0]).parent)
    digest = hashlib.sha256()
    for name, frame in (("personas", personas), ("dialogues", dialogues)):
        digest.update(name.encode())
        digest.update(frame.sort(frame.columns[0]).write_ndjson().encode())
    return digest.hexdigest()[:16]


def assign_splits(dialogues: pl.DataFrame, val_fraction: float, test_fraction: float) -> pl.DataFrame:
    """Add `split`: per persona in time order, the first dialogues train, then val, then test.

    With 30 dialogues and fractions 1/6, 1/6 that is the study's 20/5/5.
    """
    ordered = dialogues.sort("persona_id", "timestamp", "dialogue_id")
    position = pl.int_range(pl.len()).over("persona_id")
    count = pl.len().over("persona_id")
    n_test = (count * test_fraction).round().cast(pl.Int64)
    n_val = (count * val_fraction).round().cast(pl.Int64)
    split = (
        pl.when(position >= count - n_test)
        .then(pl.lit("test"))
        .when(position >= count - n_test - n_val)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )
    return ordered.with_columns(split=split)
