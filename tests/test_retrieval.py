"""Retrieval: the persona's own past in the system turn, never a leak, k=0 is unified."""

import mlflow
import polars as pl
import pytest

from research.config import DataConfig, build, parse_overrides
from research.data.schema import assign_splits, load_dataset
from research.datamodules.persona import default_context
from research.modules.retrieval import RetrievalConfig, RetrievalContext
from research.recipes.experiment import load_config
from research.recipes.train import train_and_evaluate


def _data(experiment) -> DataConfig:
    return build(DataConfig, parse_overrides([o for o in experiment if o.startswith("data.")])["data"])


def _dialogues(data: DataConfig) -> list[dict]:
    _, dialogues = load_dataset(data.dir)
    return list(assign_splits(dialogues, data.val_fraction, data.test_fraction).iter_rows(named=True))


@pytest.mark.parametrize("history", ["train", "train+val"])
def test_retrieval_reads_only_the_past_it_may_and_never_a_test_dialogue(experiment, history):
    data = _data(experiment)
    rows = _dialogues(data)
    when = {r["dialogue_id"]: (r["timestamp"], r["split"]) for r in rows}
    context = RetrievalContext(default_context(data), data, RetrievalConfig(k=50, history=history))
    for row in rows:
        for turn in (None, *range(len(row["turns"]) // 2)):
            picked = context.retrieve(row, turn)
            sources = {when[e.dialogue_id] for e in picked}
            assert row["dialogue_id"] not in {e.dialogue_id for e in picked}, "never the dialogue answered"
            assert all(split != "test" for _, split in sources), "never a test dialogue"
            if row["split"] == "train":  # leave-one-out over the other training dialogues
                assert {split for _, split in sources} <= {"train"} and picked
            else:
                allowed = {"train", "val"} if row["split"] == "test" and history == "train+val" else {"train"}
                assert {split for _, split in sources} <= allowed
                assert all(stamp < row["timestamp"] for stamp, _ in sources), "never a later dialogue"
    test_row = next(r for r in rows if r["split"] == "test")
    val_seen = any(e.split == "val" for e in context.retrieve(test_row, 0))
    assert val_seen == (history == "train+val")


def test_strategies_and_formats(experiment):
    data = _data(experiment)
    row = next(r for r in _dialogues(data) if r["split"] == "test")
    user = {"persona_id": row["persona_id"], "name": "Maya"}
    make = lambda **kw: RetrievalContext(default_context(data), data, RetrievalConfig(**kw))  # noqa: E731
    everything = make(k=100, strategy="recency").retrieve(row, 0)
    assert [e.order for e in make(k=2, strategy="recency").retrieve(row, 0)] == [e.order for e in everything[-2:]]
    semantic = make(k=1, strategy="semantic")
    (best,) = semantic.retrieve(row, 0)
    query = semantic.index.vectors[semantic.index.queries[row["dialogue_id"], 0]]
    assert max(semantic.index.vectors[e.row] @ query for e in everything) == pytest.approx(
        semantic.index.vectors[best.row] @ query
    )
    hybrid = make(k=3, strategy="hybrid").retrieve(row, 0)
    assert best in hybrid and everything[-1] in hybrid and len(hybrid) == 3
    verbatim = make(k=2).system(row, user, 0)
    assert "Earlier: " in verbatim and " => " in verbatim
    settings = make(k=3, format="settings").system(row, user, 0)
    assert "Earlier settings: " in settings and " => " not in settings
    assert make(k=0).system(row, user, 0) == default_context(data).system(row, user, 0)
    assert make(k=0).fingerprint() == default_context(data).fingerprint()


def test_k0_reproduces_unified_exactly(source_runs):
    experiment, runs = source_runs
    # named by the 8 characters the tables print; the run records the full id
    cfg = load_config(
        None, [*experiment, f"method_args.unified_run={runs['unified_lora'][:8]}", "method_args.k=0"], "retrieval"
    )
    result = train_and_evaluate(cfg)
    tags = mlflow.tracking.MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.tags
    assert tags["source.unified_run"] == runs["unified_lora"]
    predictions = {
        run_id: pl.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))
        for run_id in (result.run_id, runs["unified_lora"])
    }
    mine, unified = predictions.values()
    assert mine["prediction"].to_list() == unified["prediction"].to_list() and mine.height == unified.height


def test_a_served_retrieval_adapter_answers_and_retrieves_what_was_appended(source_runs, tmp_path, monkeypatch):
    from research.models.base import base_fingerprint
    from research.recipes.serve import RoutedModel, known_users
    from research.tracking.registry import promote, register

    experiment, runs = source_runs
    cfg = load_config(
        None, [*experiment, f"method_args.unified_run={runs['unified_lora']}", "method_args.k=2"], "retrieval"
    )
    run_id = train_and_evaluate(cfg).run_id
    version = register(cfg.tracking.uri, run_id).version
    promote(cfg.tracking.uri, tmp_path, "retrieval", version, "all", base_fingerprint(cfg.base_model))
    serve = lambda: RoutedModel(cfg.base_model, cfg.tracking.uri, tmp_path, 8, known_users(cfg.data.dir))  # noqa: E731
    model = serve()
    context = {"time_of_day": "evening", "weather": "rainy", "temperature_c": 8.0, "day_of_week": "Friday"}
    ask = lambda text: {"persona_id": "persona_001", **context, "turns": [{"role": "user", "text": text}]}  # noqa: E731
    (group,) = set(model.group_of.values()) | {model.fallback}
    assert "Earlier: " in model.system_turns([ask("turn on the lights")])[0]  # its saved history
    # a file of requests: every query embedded in one call, not one call a request
    embedder = model.contexts[group].embedder
    calls, encode = [], embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw))
    replies = model.answer([ask(text) for text in ("turn on the lights", "play some music", "warmer please")] * 4)
    assert calls == [12] and len(replies) == 12 and all(isinstance(reply, str) for reply in replies)
    monkeypatch.undo()

    assert model.remember("persona_001", "Play the zither sonata.", "Zither sonata on the speaker at volume 35.")
    assert "Zither sonata on the speaker" in model.system_turns([ask("Play the zither sonata.")])[0]
    again = serve()  # a restarted server keeps what was appended
    zither = ask("Play the zither sonata.")
    assert "Zither sonata on the speaker" in again.system_turns([zither])[0]
    assert "Zither" not in again.system_turns([zither | {"persona_id": "persona_002"}])[0]
