import json

import polars as pl
import pytest

from research.data.schema import DataError, assign_splits, load_dataset, write_dataset


def _write_jsonl(directory, personas, dialogues):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "personas.jsonl").write_text("\n".join(json.dumps(p) for p in personas))
    (directory / "dialogues.jsonl").write_text("\n".join(json.dumps(d, default=str) for d in dialogues))


def _export(data_root, tmp_path):
    personas, dialogues = load_dataset(data_root / "personas")
    src = tmp_path / "src"
    _write_jsonl(src, personas.to_dicts(), dialogues.to_dicts())
    return src, personas, dialogues


def test_jsonl_round_trip(data_root, tmp_path):
    src, personas, dialogues = _export(data_root, tmp_path)
    loaded_personas, loaded_dialogues = load_dataset(src)
    assert loaded_personas.equals(personas)
    assert loaded_dialogues.equals(dialogues)


def test_bad_row_names_file_row_and_field(data_root, tmp_path):
    src, personas, dialogues = _export(data_root, tmp_path)
    rows = dialogues.to_dicts()
    rows[2]["turns"][1]["actions"] = [{"device": "lights", "parameter": "hue", "value": "red"}]
    rows[4]["time_of_day"] = "midnight"
    _write_jsonl(src, personas.to_dicts(), rows)
    with pytest.raises(DataError) as err:
        load_dataset(src)
    message = str(err.value)
    assert "dialogues.jsonl row 3, field turns[1].actions[0].parameter: 'hue' is not a parameter of lights" in message
    assert "row 5, field time_of_day: 'midnight' not one of" in message


def test_unknown_persona_and_broken_json(data_root, tmp_path):
    src, personas, dialogues = _export(data_root, tmp_path)
    rows = dialogues.to_dicts()
    rows[0]["persona_id"] = "nobody"
    _write_jsonl(src, personas.to_dicts(), rows)
    with pytest.raises(DataError, match="row 1, field persona_id: 'nobody' is not in the personas file"):
        load_dataset(src)
    (src / "personas.jsonl").write_text('{"persona_id": "a"\n')
    with pytest.raises(DataError, match=r"personas.jsonl row 1: not valid JSON"):
        load_dataset(src)


def test_import_is_all_or_nothing(data_root, tmp_path):
    from research.cli import main

    src, personas, dialogues = _export(data_root, tmp_path)
    out = tmp_path / "imported"
    main(["data", "import", str(src), "--out", str(out)])
    assert load_dataset(out)[1].equals(dialogues)
    before = (out / "dialogues.parquet").read_bytes()
    rows = dialogues.to_dicts()
    rows[-1]["turns"][0]["role"] = "assistant"
    _write_jsonl(src, personas.to_dicts(), rows)
    with pytest.raises(SystemExit):
        main(["data", "import", str(src), "--out", str(out)])
    assert (out / "dialogues.parquet").read_bytes() == before  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported", "src"]  # no staging left behind


def test_write_dataset_replaces_atomically(tmp_path):
    frame = pl.DataFrame({"a": [1]})
    write_dataset(tmp_path / "d", frame, frame, {"v": 1})
    write_dataset(tmp_path / "d", frame, frame, {"v": 2})
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == {"v": 2}


def test_splits_are_per_persona_and_time_ordered(data_root):
    _, dialogues = load_dataset(data_root / "personas")
    split = assign_splits(dialogues, 1 / 6, 1 / 6)
    for _, group in split.group_by("persona_id"):
        assert group["split"].to_list() == ["train"] * 4 + ["val"] + ["test"]
        latest = group.group_by("split").agg(
            pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last")
        )
        bounds = {r["split"]: r for r in latest.iter_rows(named=True)}
        assert bounds["train"]["last"] < bounds["val"]["first"] <= bounds["val"]["last"] < bounds["test"]["first"]


def test_study_split_is_20_5_5():
    from research.data.generate import _frames
    from research.data.simulator import simulate

    _, dialogues = _frames(*simulate(2, 30, seed=0)[:2])
    counts = assign_splits(dialogues, 1 / 6, 1 / 6).group_by("persona_id", "split").len()
    assert set(counts.filter(pl.col("split") == "train")["len"]) == {20}
    assert set(counts.filter(pl.col("split") != "train")["len"]) == {5}
