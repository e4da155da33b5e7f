"""Dataset schema, validation, atomic writing, loading and time-ordered splits.

A dataset is a directory with `personas.{parquet,jsonl}` and
`dialogues.{parquet,jsonl}`. Users bring their own data in the same schema;
every row is validated and each problem is reported by file, row and field
(every problem found, the first MAX_REPORTED_ERRORS listed). What training assumes,
checked: UTF-8 JSON lines or readable Parquet; text fields non-empty and at most
MAX_TEXT_CHARS; unique ids; every dialogue's persona in the personas file and every
persona with dialogues (and, after the splits, a training dialogue); context values
from the domain (time of day, weather, weekday matching the timestamp, a finite
outdoor temperature in its range); one persona's timestamps distinct, so its dialogues
have one time order; turns alternating user first with at least one reply; devices
and actions known, in range, and only on the assistant's turns.
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

from research.config import UserInputError, read_text
from research.data.domain import (
    DAYS_OF_WEEK,
    DEVICES,
    NUMERIC_PARAMETERS,
    OUTDOOR_TEMPERATURE_C,
    TIMES_OF_DAY,
    WEATHERS,
)

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
MAX_REPORTED_ERRORS = 20  # problems listed by `research data validate`; the rest are counted
MAX_TEXT_CHARS = 2000  # a turn's text, a name or a description (the simulator's longest turn is 178)


class DataError(UserInputError):
    """Invalid input data; the message names file, row and field of each problem."""


def _find(directory: Path, stem: str) -> Path:
    if not directory.is_dir():
        what = "not a dataset directory" if directory.exists() else "no such dataset directory"
        raise DataError(f"{directory}: {what} (generate one with `research data generate`)")
    found = [
        directory / f"{stem}{suffix}" for suffix in (".parquet", ".jsonl") if (directory / f"{stem}{suffix}").exists()
    ]
    if not found:
        raise DataError(f"{directory}: no {stem}.parquet or {stem}.jsonl (generate one with `research data generate`)")
    if len(found) > 1:
        raise DataError(
            f"{directory}: both {stem}.parquet and {stem}.jsonl; keep one, so it is clear which is the data"
        )
    return found[0]


def read_rows(path: Path) -> tuple[list[tuple[int, object]], list[str]]:
    """((row number, row) for each row, problems) of a Parquet or JSONL file. JSONL rows are
    numbered by their line, and a line that is not JSON is a problem, not the end of the
    reading; a file that cannot be read at all is a DataError naming it (and the line)."""
    if path.suffix == ".parquet":
        try:
            return list(enumerate(pl.read_parquet(path).to_dicts(), start=1)), []
        except (pl.exceptions.PolarsError, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    rows, problems = [], []
    for line_no, line in enumerate(read_text(path, DataError).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as err:
            problems.append(f"{path} row {line_no}: not valid JSON ({getattr(err, 'msg', 'nested too deeply')})")
    return rows, problems


def _text(row: dict, field: str, errors: list[str], where: str = "field ") -> str | None:
    """The non-empty string at `row[field]` (at most MAX_TEXT_CHARS), else None and a problem."""
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{where}{field}: must be a non-empty string, got {_short(value)}")
        return None
    if len(value) > MAX_TEXT_CHARS:
        errors.append(f"{where}{field}: {len(value)} characters, at most {MAX_TEXT_CHARS}")
        return None
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _choice(row: dict, field: str, allowed: tuple, errors: list[str], where: str = "field ") -> None:
    if not isinstance(row.get(field), str) or row[field] not in allowed:
        errors.append(f"{where}{field}: {_short(row.get(field))} not one of {', '.join(allowed)}")


def _check_persona(row: dict, errors: list[str]) -> None:
    for field in ("persona_id", "name", "description"):
        _text(row, field, errors)
    for field in ("traits", "preferences"):
        value = row.get(field)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                errors.append(f"field {field}: not a JSON object")
                continue
        if value is not None and not isinstance(value, dict):
            errors.append(f"field {field}: must be an object or null, got {type(value).__name__}")


def _check_value(device: str, parameter: str, value) -> str | None:
    allowed = DEVICES[device][parameter]
    if parameter in NUMERIC_PARAMETERS:
        try:
            number = int(value) if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
        except ValueError:
            return f"{_short(value)} is not an integer"
        return None if allowed[0] <= number <= allowed[1] else f"{number} outside {allowed[0]}..{allowed[1]}"
    return None if isinstance(value, str) and value in allowed else f"{_short(value)} not one of {', '.join(allowed)}"


def _check_actions(where: str, turn: dict, errors: list[str]) -> None:
    """The turn's devices and (device, parameter, value) actions: known names, values in
    their ranges, each action's device among the turn's devices; a user turn has none."""
    devices, actions = turn.get("devices") or [], turn.get("actions") or []
    for field, value in (("devices", devices), ("actions", actions)):
        if not isinstance(value, list):
            errors.append(f"{where}.{field}: must be a list, got {_short(value)}")
            return
    if turn.get("role") == "user" and (devices or actions):
        errors.append(f"{where}: a user turn carries no devices or actions")
    for d, device in enumerate(devices):
        if not isinstance(device, str) or device not in DEVICES:
            errors.append(f"{where}.devices[{d}]: {_short(device)} is not a device (allowed: {', '.join(DEVICES)})")
    for a, action in enumerate(actions):
        at = f"{where}.actions[{a}]"
        if not isinstance(action, dict) or set(action) != {"device", "parameter", "value"}:
            errors.append(f"{at}: must be an object with device, parameter and value, got {_short(action)}")
            continue
        device, parameter = action["device"], action["parameter"]
        if not isinstance(device, str) or device not in DEVICES:
            errors.append(f"{at}.device: {_short(device)} is not a device (allowed: {', '.join(DEVICES)})")
        elif not isinstance(parameter, str) or parameter not in DEVICES[device]:
            errors.append(
                f"{at}.parameter: {_short(parameter)} is not a parameter of {device} "
                f"(allowed: {', '.join(DEVICES[device])})"
            )
        elif problem := _check_value(device, parameter, action["value"]):
            errors.append(f"{at}.value: {problem}")
        elif device not in devices:
            errors.append(f"{at}.device: {device!r} is not among the turn's devices")


def _check_turns(turns, errors: list[str], request: bool = False) -> None:
    """Turns alternating user first; a dialogue has a reply, a request ends with the user's turn."""
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
                f"{where}.role: expected {expected!r} (turns alternate, user first), got {_short(turn.get('role'))}"
            )
        _text(turn, "text", errors, f"{where}.")
        _check_actions(where, turn, errors)
    if request and len(turns) % 2 == 0:
        errors.append("field turns: must end with a user turn (the one to answer)")
    elif not request and len(turns) < 2:
        errors.append("field turns: needs at least one assistant turn")


def _timestamp(value) -> datetime | None:
    """A naive date-time (an offset is dropped: time of day and weekday are local), or None."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return value.replace(tzinfo=None) if isinstance(value, datetime) else None


def _check_context(row: dict, errors: list[str]) -> None:
    """What the system turn tells the assistant: values of the domain, a finite temperature in range."""
    _choice(row, "weather", WEATHERS, errors)
    _choice(row, "time_of_day", TIMES_OF_DAY, errors)
    _choice(row, "day_of_week", DAYS_OF_WEEK, errors)
    temperature, (low, high) = row.get("temperature_c"), OUTDOOR_TEMPERATURE_C
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        errors.append(f"field temperature_c: must be a number, got {_short(temperature)}")
    elif not low <= temperature <= high:  # NaN fails this too
        errors.append(f"field temperature_c: {temperature} outside {low}..{high} (degrees Celsius)")


def _check_dialogue(row: dict, persona_ids: set[str], errors: list[str]) -> None:
    _text(row, "dialogue_id", errors)
    if (persona := _text(row, "persona_id", errors)) is not None and persona not in persona_ids:
        errors.append(f"field persona_id: {persona!r} is not in the personas file")
    _check_context(row, errors)
    timestamp = _timestamp(row.get("timestamp"))
    if timestamp is None:
        errors.append(f"field timestamp: must be an ISO date-time, got {_short(row.get('timestamp'))}")
    elif row.get("day_of_week") in DAYS_OF_WEEK and timestamp.strftime("%A") != row["day_of_week"]:
        errors.append(f"field day_of_week: {row['day_of_week']!r}, but the timestamp {timestamp} is a {timestamp:%A}")
    _check_turns(row.get("turns"), errors)


def _check_request(row: dict, errors: list[str]) -> None:
    _text(row, "persona_id", errors)
    _check_context(row, errors)
    _check_turns(row.get("turns"), errors, request=True)


def _checked(path: Path, rows: list[tuple[int, object]], check, key: str | None, problems: list[str]) -> list[dict]:
    """The rows that pass `check`; the problems of the others go to `problems` by row and field."""
    valid, seen = [], set()
    for number, row in rows:
        errors: list[str] = []
        if not isinstance(row, dict):
            errors.append("not a JSON object")
        else:
            check(row, errors)
            if key is not None and isinstance(row.get(key), str):
                if row[key] in seen:
                    errors.append(f"field {key}: duplicate {row[key]!r}")
                seen.add(row[key])
        problems += [f"{path} row {number}, {e}" for e in errors]
        if not errors:
            valid.append(row)
    return valid


def _check_coverage(persona_path: Path, dialogue_path: Path, personas, dialogues, problems: list[str]) -> None:
    """Each persona has dialogues, and one persona's dialogues have distinct timestamps, so
    they have one time order (the splits follow it)."""
    times: dict[str, set[datetime]] = {}
    for row in dialogues:
        moments = times.setdefault(row["persona_id"], set())
        if row["timestamp"] in moments:
            problems.append(
                f"{dialogue_path}, dialogue {row['dialogue_id']}: persona {row['persona_id']} has another dialogue "
                f"at {row['timestamp']} (one persona's dialogues need distinct timestamps: splits follow time order)"
            )
        moments.add(row["timestamp"])
    if dialogues:  # else "no rows" says it
        for row in personas:
            if row["persona_id"] not in times:
                problems.append(f"{dialogue_path}: persona {row['persona_id']} has no dialogues")


def validated_frames(
    persona_rows: list[tuple[int, object]],
    dialogue_rows: list[tuple[int, object]],
    persona_path: Path = Path("personas"),
    dialogue_path: Path = Path("dialogues"),
    problems: list[str] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(personas, dialogues) frames of rows numbered as `read_rows` gives them, or a
    DataError listing every problem (the first MAX_REPORTED_ERRORS) by file, row and field.
    Whatever the rows hold, nothing else is raised."""
    problems = list(problems)
    for path, rows in ((persona_path, persona_rows), (dialogue_path, dialogue_rows)):
        if not rows and not any(p.startswith(f"{path} ") for p in problems):  # not only unreadable lines
            problems.append(f"{path}: no rows (a dataset needs at least one persona and one dialogue)")
    personas = _checked(persona_path, persona_rows, _check_persona, "persona_id", problems)
    # a dialogue of a persona whose row has problems is not "of an unknown persona" too
    ids = {r["persona_id"] for _, r in persona_rows if isinstance(r, dict) and isinstance(r.get("persona_id"), str)}
    dialogues = _checked(dialogue_path, dialogue_rows, lambda r, e: _check_dialogue(r, ids, e), "dialogue_id", problems)
    if not problems:  # coverage needs every row valid
        dialogues = [{**d, "timestamp": _timestamp(d["timestamp"])} for d in dialogues]
        _check_coverage(persona_path, dialogue_path, personas, dialogues, problems)
    _raise_problems(problems)
    persona_df = pl.DataFrame([_persona_record(p) for p in personas], schema=PERSONA_SCHEMA)
    dialogue_df = pl.DataFrame([_dialogue_record(d) for d in dialogues], schema=DIALOGUE_SCHEMA)
    return persona_df, dialogue_df.sort("persona_id", "timestamp", "dialogue_id")


def _raise_problems(problems: list[str]) -> None:
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED_ERRORS} more" if len(problems) > MAX_REPORTED_ERRORS else ""
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        raise DataError(f"invalid data ({count}):\n" + "\n".join(problems[:MAX_REPORTED_ERRORS]) + more)


def _persona_record(row: dict) -> dict:
    """The schema's fields of a valid persona row; traits and preferences as JSON text."""
    record = {field: row.get(field) for field in PERSONA_SCHEMA}
    for field in ("traits", "preferences"):
        if record[field] is not None and not isinstance(record[field], str):
            record[field] = json.dumps(record[field], sort_keys=True)
    return record


def _dialogue_record(row: dict) -> dict:
    """The schema's fields of a valid dialogue row; action values as text."""
    turns = [
        {
            "role": turn["role"],
            "text": turn["text"],
            "devices": list(turn.get("devices") or []),
            "actions": [{**a, "value": str(a["value"])} for a in turn.get("actions") or []],
        }
        for turn in row["turns"]
    ]
    return {
        **{field: row[field] for field in DIALOGUE_SCHEMA},
        "temperature_c": float(row["temperature_c"]),
        "turns": turns,
    }


def load_dataset(directory: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validated (personas, dialogues) from a dataset directory (Parquet or JSONL)."""
    directory = Path(directory)
    persona_path, dialogue_path = _find(directory, "personas"), _find(directory, "dialogues")
    persona_rows, persona_problems = read_rows(persona_path)
    dialogue_rows, dialogue_problems = read_rows(dialogue_path)
    return validated_frames(
        persona_rows, dialogue_rows, persona_path, dialogue_path, persona_problems + dialogue_problems
    )


def validated_requests(rows: list[tuple[int, object]], source: str | Path, problems: list[str] = ()) -> list[dict]:
    """Requests to answer (persona_id, the context fields, turns alternating user first and
    ending with the user's turn), checked like a dataset's rows: a DataError lists every
    problem by source, row and field."""
    problems = list(problems)
    requests = _checked(source, rows, _check_request, None, problems)
    if not rows and not problems:
        problems.append(f"{source}: no rows (nothing to answer)")
    if not problems:
        try:  # the rows go back out with their predictions: each field needs one type
            pl.DataFrame(requests, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError) as err:
            problems.append(f"{source}: the rows do not share one type per field ({str(err).splitlines()[0]})")
    _raise_problems(problems)
    return requests


def read_requests(path: str | Path) -> list[dict]:
    """Validated requests from a JSONL or Parquet file (validated_requests)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise DataError(f"{path}: requests are a .jsonl or .parquet file")
    rows, problems = read_rows(path)
    return validated_requests(rows, path, problems)


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
    ordered = ordered.with_columns(split=split)
    trained = set(ordered.filter(pl.col("split") == "train")["persona_id"])
    if untrained := sorted(set(ordered["persona_id"]) - trained):
        raise DataError(
            f"persona {untrained[0]} ({len(untrained)} such) has no training dialogue with data.val_fraction "
            f"{val_fraction:.3g} and data.test_fraction {test_fraction:.3g}: give it more dialogues or lower them"
        )
    return ordered
