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


def test_empty_sides():
    nothing = structured_scores("You're welcome!", "Anytime!")
    assert nothing["device_precision"] == nothing["device_recall"] == nothing["numerical_precision"] == 1.0
    silent = structured_scores("Setting the lights to 40%.", "Okay!")
    assert silent["device_precision"] == silent["device_recall"] == silent["param_f1"] == 0.0


def test_embedding_similarity_ranks_paraphrase_above_unrelated():
    frame = score_turns(
        ["Setting lights to 50%", "Setting lights to 50%", "Setting lights to 50%"],
        ["Setting lights to 50%", "Adjusting lights to 50 percent", "The weather is sunny today"],
    )
    same, paraphrase, unrelated = frame["embedding_similarity"].to_list()
    assert same == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.8 > unrelated


def test_every_persona_weighs_the_same():
    import polars as pl

    turns = pl.DataFrame({"persona_id": ["a", "a", "a", "b"]}).hstack(
        score_turns(["lights to 40%"] * 4, ["lights to 40%", "lights to 40%", "lights to 40%", "tv on"])
    )
    personas = per_persona(turns)
    assert personas["device_precision"].to_list() == [1.0, 0.0]
    assert overall(personas)["device_precision"] == 0.5  # not 3/4
