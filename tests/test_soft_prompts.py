"""Soft prompts: the engine is a prefix of vectors, its export is PEFT's prompt tuning,
and prompt_persona, prompt_cluster and user_embedding train, export and serve."""

import json
from pathlib import Path

import mlflow
import polars as pl
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from research.config import ConfigError
from research.data.schema import load_dataset
from research.datamodules.persona import chat_ids, prompt_batches
from research.datamodules.prompts import conversation, system_text
from research.models.base import base_fingerprint, load_base
from research.modules.base import Provided, greedy_generate
from research.modules.soft_prompts import left_padded, prepend, read_prompt
from research.modules.user_embedding import UNSEEN, UserEmbeddingConfig, UserEmbeddingModule
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, known_users
from research.recipes.train import train_and_evaluate
from research.tracking.registry import promote, register

CONTEXT = {"time_of_day": "evening", "weather": "rainy", "temperature_c": 8.0, "day_of_week": "Friday"}


def _prompt(tokenizer, text: str) -> list[int]:
    request = {**CONTEXT, "turns": [{"role": "user", "text": text}]}
    return chat_ids(tokenizer, conversation(request, system_text(request)), generation_prompt=True)


def test_a_soft_prompt_answers_as_its_vectors_written_in_front_would(base_dir):
    """Prepending vectors, left padding and a row with no prompt in the same batch: the
    same greedy tokens as the same embeddings given as text, row by row."""
    tokenizer, model = load_base(base_dir)
    model.eval()
    prefix = tokenizer("User: Maya. lights brightness 80, warm", add_special_tokens=False)["input_ids"]
    texts = ["turn on the lights", "play some music in the kitchen", "set the ac to 22"]
    prompts = [_prompt(tokenizer, text) for text in texts]
    vectors = model.get_input_embeddings()(torch.tensor(prefix)).detach()
    index, batch = next(prompt_batches(prompts, tokenizer.pad_token_id, 4))
    text_prefixes = {0: prefix, 1: prefix[-3:], 2: []}  # prompts of two lengths, and none
    soft, mask = left_padded([[vectors, vectors[-3:], None][i] for i in index], vectors.shape[1])
    got = greedy_generate(model, tokenizer, prepend(model, batch, soft, mask), 12)
    answers = []
    for row, i in enumerate(index):
        hard = torch.tensor([text_prefixes[i] + prompts[i]])
        expected = greedy_generate(model, tokenizer, {"input_ids": hard, "attention_mask": torch.ones_like(hard)}, 12)
        assert got[row, : expected.shape[1]].tolist() == expected[0].tolist()
        answers.append(tokenizer.decode(expected[0]))
    assert len(set(answers)) > 1, "the base answers differently: the comparison can tell rows apart"


def test_an_unseen_persona_gets_the_mean_of_the_trained_vectors(base_dir):
    tokenizer, model = load_base(base_dir)
    provided = Provided(persona_ids=["a", "b", "c"], trained_personas={"a", "b"})
    module = UserEmbeddingModule(model, tokenizer, None, UserEmbeddingConfig(dim=8, tokens=2), provided)
    trained = torch.stack(list(module.vectors[:2]))
    vectors = module.user_vectors(torch.tensor([0, 1, 2]))
    assert torch.allclose(vectors[2], trained.mean(0)) and torch.equal(vectors[:2], trained)
    # the projection starts at zero: everyone starts with the same prompt
    prompts = module.prompts({"persona_idx": torch.tensor([0, 1])})
    assert prompts.shape == (2, 2, model.config.hidden_size) and torch.equal(prompts[0], prompts[1])
    # a persona absent from the batch gets no gradient (AdamW then leaves its vector alone)
    module.projection.weight.data.normal_()
    module.prompts({"persona_idx": torch.tensor([0, 0])}).sum().backward()
    assert module.vectors[0].grad is not None and module.vectors[1].grad is None


@pytest.fixture(scope="module")
def prompt_persona_run(source_runs):
    experiment, runs = source_runs
    cfg = load_config(None, [*experiment, "method_args.length=3", "train.lr=3e-2"], "prompt_persona")
    return cfg, runs, train_and_evaluate(cfg)


def test_prompt_persona_trains_only_its_prompts_on_the_unified_model_and_exports_peft_prompt_tuning(
    prompt_persona_run,
):
    cfg, runs, result = prompt_persona_run
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["source.unified_run"] == runs["unified_lora"]
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    groups = json.loads((adapter / "groups.json").read_text())
    tokenizer, base = load_base(cfg.base_model)
    hidden = base.config.hidden_size
    assert run.data.metrics["params/trainable"] == len(groups) * 3 * hidden

    unified = mlflow.artifacts.download_artifacts(run_id=runs["unified_lora"], artifact_path="adapter")
    before, after = (load_file(f"{d}/adapter_model.safetensors") for d in (unified, adapter / "lora"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    prompts = {persona: read_prompt(adapter / group) for persona, group in groups.items()}
    first, second = list(prompts.values())[:2]
    assert first.shape == (3, hidden) and not torch.equal(first, second), "each persona learned its own prompt"

    # plain PEFT loads a persona's prompt over the unified model and computes what the module did
    persona = sorted(groups)[0]
    merged = PeftModel.from_pretrained(base, adapter / "lora").merge_and_unload()
    peft = PeftModel.from_pretrained(merged, adapter / groups[persona]).eval()
    ids = torch.tensor([_prompt(tokenizer, "turn on the lights")])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logits = peft(**batch).logits
        expected = merged(**prepend(merged, batch, prompts[persona][None])).logits
    assert torch.allclose(logits, expected, atol=1e-4)


def test_served_prompts_answer_as_evaluated_next_to_a_lora_adapter(prompt_persona_run, data_root, tmp_path):
    """A mixed batch: personas on prompt_persona and one on unified_lora. Each answer is
    the one the run's evaluation generated for the same test prompt."""
    cfg, runs, result = prompt_persona_run
    routing, fp = tmp_path / "routing", base_fingerprint(cfg.base_model)
    promote(cfg.tracking.uri, routing, "prompt_persona", register(cfg.tracking.uri, result.run_id).version, "all", fp)
    unified_version = register(cfg.tracking.uri, runs["unified_lora"]).version
    users = known_users(data_root / "personas")
    on_unified = sorted(users)[0]
    promote(cfg.tracking.uri, routing, "unified_lora", unified_version, [on_unified], fp)
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, cfg.eval.max_new_tokens, users)

    def evaluated(run_id: str) -> pl.DataFrame:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet")
        return pl.read_parquet(path).filter(pl.col("split") == "test", pl.col("turn") == 0)

    _, dialogues = load_dataset(cfg.data.dir)
    requests, expected = [], []
    for persona in sorted(users)[:3]:
        run_id = runs["unified_lora"] if persona == on_unified else result.run_id
        row = evaluated(run_id).filter(pl.col("persona_id") == persona).row(0, named=True)
        dialogue = dialogues.filter(pl.col("dialogue_id") == row["dialogue_id"]).row(0, named=True)
        requests.append({**dialogue, "turns": dialogue["turns"][:1]})
        expected.append(row["prediction"])
    assert all(expected), "the runs answer in words, so equal answers mean something"
    assert model.answer(requests) == expected


def test_user_embedding_trains_with_its_lora_and_serves_an_unseen_persona_the_mean(experiment, tmp_path):
    cfg = load_config(None, [*experiment, "method_args.dim=8", "method_args.tokens=2"], "user_embedding")
    result = train_and_evaluate(cfg)
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    manifest = json.loads((adapter / "manifest.json").read_text())
    weights = load_file(adapter / manifest["user_embedding"])
    vectors = weights["vectors"]
    assert vectors.shape == (len(manifest["persona_ids"]), 8)
    assert weights["projection.weight"].abs().sum() > 0, "the projection learned"
    mean_prompt = (weights["projection.weight"] @ vectors.mean(0) + weights["projection.bias"]).view(2, -1)
    assert torch.allclose(read_prompt(adapter / UNSEEN), mean_prompt, atol=1e-5)

    routing = tmp_path / "routing"
    version = register(cfg.tracking.uri, result.run_id).version
    table = promote(cfg.tracking.uri, routing, "user_embedding", version, "all", base_fingerprint(cfg.base_model))
    assert table["fallback"]["adapter"] == UNSEEN and len(table["routes"]) == len(manifest["persona_ids"])
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, 8)
    assert torch.equal(model.prompts[model.fallback], read_prompt(adapter / UNSEEN))
    ask = {**CONTEXT, "turns": [{"role": "user", "text": "turn on the lights"}]}
    newcomer = {"persona_id": "newcomer", "name": "Ada", **ask}
    replies = model.answer([newcomer, {"persona_id": "persona_001", **ask}])
    # the newcomer's answer: the exported LoRA with the mean vector's prompt, built by hand
    tokenizer, base = load_base(cfg.base_model)
    lora = PeftModel.from_pretrained(base, adapter / "lora").eval()
    ids = torch.tensor([chat_ids(tokenizer, conversation(newcomer, system_text(newcomer, name="Ada")), True)])
    batch = prepend(lora, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mean_prompt[None])
    expected = tokenizer.decode(greedy_generate(lora, tokenizer, batch, 8)[0], skip_special_tokens=True).strip()
    assert replies[0] == expected and expected


def test_prompt_cluster_learns_one_prompt_per_cluster(source_runs):
    experiment, _ = source_runs
    cfg = load_config(None, [*experiment, "method_args.length=2", "method_args.clustering.k=2"], "prompt_cluster")
    result = train_and_evaluate(cfg)
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    groups = json.loads((adapter / "groups.json").read_text())
    assert len(set(groups.values())) == 2 and len(groups) == 6
    hidden = read_prompt(adapter / next(iter(groups.values()))).shape[1]
    assert mlflow.get_run(result.run_id).data.metrics["params/trainable"] == 2 * 2 * hidden


def test_selective_routing_refuses_a_prompt_candidate(prompt_persona_run, source_runs):
    """It routes between LoRA weights; a learned-prompt run's prompts would be lost."""
    _, _, result = prompt_persona_run
    experiment, _ = source_runs
    routing = load_config(None, [*experiment, f"method_args.candidate_runs={result.run_id}"], "selective_routing")
    with pytest.raises(ConfigError, match=r"adapter kind 'prompt\+lora'"):
        train_and_evaluate(routing)
