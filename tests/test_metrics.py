import json
from pathlib import Path

import polars as pl
import pytest

from research.evaluation.metrics import extract, overall, per_persona, score_turns, structured_scores


def test_study_worked_example():
    scores = structured_scores(
        "Setting the AC to 22 degrees and lights to 50% brightness.",
        "I'll set the AC to 20 degrees and the lights to 50%.",
    )
    assert scores["device_precision"] == 1.0  # AC and lights both right: 2/2
    assert scores["numerical_precision"] == 0.5  # 50 right, 20 wrong: 1/2
    assert scores["param_precision"] == 0.5


@pytest.mark.parametrize(
    ("text", "triples"),
    [
        ("Turn the air conditioner to twenty-two degrees", {("ac", "temperature", "22")}),
        ("thermostat at 21°C, heat mode", {("ac", "temperature", "21"), ("ac", "mode", "heat")}),
        ("heating to nineteen degrees", {("ac", "temperature", "19")}),
        ("the lamp at fifty percent", {("lights", "brightness", "50")}),
        ("lights at half, warm white", {("lights", "brightness", "50"), ("lights", "color", "warm")}),
        ("music volume at max, some jazz", {("speaker", "volume", "100"), ("speaker", "genre", "jazz")}),
        ("speaker to thirty five", {("speaker", "volume", "35")}),
        ("Television at volume 20 and lights to 10%", {("tv", "volume", "20"), ("lights", "brightness", "10")}),
        (
            "Turning off the lights and locking the front door",
            {("lights", "brightness", "0"), ("lock", "state", "locked")},
        ),
        ("one hundred percent brightness", {("lights", "brightness", "100")}),
        ("Bumping the brightness to a hundred percent.", {("lights", "brightness", "100")}),
        ("I've set it to 22 degrees.", {("ac", "temperature", "22")}),
        ("You're welcome!", set()),
    ],
)
def test_extraction_reads_how_people_phrase_things(text, triples):
    assert extract(text).triples == triples


def test_synonyms_map_to_devices():
    assert extract("the lamp and the air conditioning and the sound system and the telly").devices == {
        "lights",
        "ac",
        "speaker",
        "tv",
    }


def test_a_turn_with_nothing_to_set_scores_only_mistakes():
    silent = structured_scores("You're welcome!", "Anytime!")
    assert set(silent.values()) == {None}  # no evidence either way: not scored, not a free 1.0
    acting = structured_scores("You're welcome!", "Setting the lights to 40%.")
    assert acting["param_precision"] == acting["param_f1"] == acting["numerical_precision"] == 0.0
    assert acting["param_recall"] is None and acting["device_recall"] is None
    mute = structured_scores("Setting the lights to 40%.", "Okay!")
    assert mute["device_precision"] == mute["device_recall"] == mute["param_f1"] == 0.0


def test_unscored_turns_leave_the_persona_mean_to_the_scored_ones():
    turns = pl.DataFrame({"persona_id": ["a", "a"]}).hstack(
        score_turns(["You're welcome!", "Lights to 40%."], ["Anytime!", "Lights to 40%."])
    )
    assert per_persona(turns)["param_f1"].to_list() == [1.0]
    assert score_turns(["You're welcome!"], ["Anytime!"])["param_f1"].to_list() == [None]


@pytest.mark.parametrize(
    ("text", "triples"),
    [
        # stray words are not settings
        ("One moment. Setting the AC to heat mode.", {("ac", "mode", "heat")}),
        ("Cool! The lights are at 40%.", {("lights", "brightness", "40")}),
        ("It's warm in here, so I've switched the AC to cool.", {("ac", "mode", "cool")}),
        ("Setting the lights to 40% in 5 minutes.", {("lights", "brightness", "40")}),
        ("I'll turn the lights off in half an hour.", {("lights", "brightness", "0")}),
        ("Lights to half at quarter past nine.", {("lights", "brightness", "50")}),
        ("It's 8 degrees outside, so I've turned the heating to 23.", {("ac", "temperature", "23")}),
        # decimals stay decimals
        ("Thermostat to 21.5°C.", {("ac", "temperature", "21.5")}),
        ("AC's at twenty one point five degrees.", {("ac", "temperature", "21.5")}),
        # superlatives and min/max words: the parameter's range bound
        ("Lights at their brightest.", {("lights", "brightness", "100")}),
        ("Telly's volume set to the minimum.", {("tv", "volume", "0")}),
        ("Quarter volume on the TV.", {("tv", "volume", "25")}),
        ("The TV is muted.", {("tv", "volume", "0")}),
        # a parameter without its device named
        ("Warm white, 60%.", {("lights", "color", "warm"), ("lights", "brightness", "60")}),
        # number words
        ("Thermostat's been set to nineteen and a half degrees.", {("ac", "temperature", "19.5")}),
    ],
)
def test_cases_the_extractor_used_to_misread(text, triples):
    assert extract(text).triples == triples


def test_decimals_do_not_round_into_a_match():
    assert structured_scores("Setting the thermostat to 22 degrees.", "Thermostat to 21.5°C.")["param_f1"] == 0.0


def test_phrasing_set_agreement(capsys):
    """Phrasings written the way people talk, not from the simulator's templates: the
    extractor must read devices and triples exactly as the person who wrote them did."""
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "phrasings.jsonl").read_text().splitlines()]
    misread = []
    for row in rows:
        found = extract(row["text"])
        if found.devices != set(row["devices"]) or found.triples != {tuple(t) for t in row["triples"]}:
            misread.append(f"{row['text']!r}: read {sorted(found.triples)}, written {row['triples']}")
    agreement = 1 - len(misread) / len(rows)
    with capsys.disabled():
        print(f"\nextractor agreement on {len(rows)} written phrasings: {agreement:.1%}", *misread, sep="\n  ")
    assert len(rows) >= 100 and agreement >= 0.95


def test_embedding_similarity_ranks_paraphrase_above_unrelated():
    frame = score_turns(
        ["Setting lights to 50%", "Setting lights to 50%", "Setting lights to 50%"],
        ["Setting lights to 50%", "Adjusting lights to 50 percent", "The weather is sunny today"],
    )
    same, paraphrase, unrelated = frame["embedding_similarity"].to_list()
    assert same == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.8 > unrelated


def test_every_persona_weighs_the_same():
    turns = pl.DataFrame({"persona_id": ["a", "a", "a", "b"]}).hstack(
        score_turns(["lights to 40%"] * 4, ["lights to 40%", "lights to 40%", "lights to 40%", "tv on"])
    )
    personas = per_persona(turns)
    assert personas["device_precision"].to_list() == [1.0, 0.0]
    assert overall(personas)["device_precision"] == 0.5  # not 3/4


def test_parameter_recall_says_which_parameters_a_model_gets_right():
    from research.evaluation.metrics import parameter_recall

    references = ["Setting the lights to 40% and a warm tone.", "Playing some jazz at volume 25.", "You're welcome!"]
    predictions = ["Setting the lights to 40% and a daylight tone.", "Playing some jazz at volume 30.", "Okay."]
    assert parameter_recall(references, predictions) == {
        "lights.brightness": 1.0,
        "lights.color": 0.0,
        "speaker.genre": 1.0,
        "speaker.volume": 0.0,
    }
