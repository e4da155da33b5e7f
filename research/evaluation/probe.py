"""The copy probe: does a base model use what its system turn states?

Held-out neutral speakers (drawn with a seed pretraining never used) make one request
each dialogue; the base answers zero-shot three times: told the settings the reply makes
(`resolved`: reading alone, a perfect reader scores 1.0), told the speaker's raw
preferences (`preferences`: reading plus the context arithmetic), and told neither
(`none`). Per parameter, the share of reference settings the reply gets right. It takes
seconds and trains nothing, so a base recipe can be judged before the instrument's LoRA
runs (`research probe`, and printed after `research base`).
"""

from __future__ import annotations

from tqdm.auto import tqdm

from research.data.simulator import simulate
from research.datamodules.persona import chat_ids, prompt_batches
from research.datamodules.prompts import system_text
from research.evaluation.metrics import parameter_recall, structured_scores
from research.modules.base import greedy_generate

PROBE_SEED = 424_242  # not the neutral population's (seed + 1_000_003) nor the personas'


def _replies(tokenizer, model, prompts: list[list[int]], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy replies through the same batching and generation as evaluation."""
    replies = [""] * len(prompts)
    model.eval()
    batches = list(prompt_batches(prompts, tokenizer.pad_token_id, batch_size))
    for index, batch in tqdm(batches, desc="copy probe", unit="batch", leave=False):
        batch = {key: value.to(model.device) for key, value in batch.items()}
        new_tokens = greedy_generate(model, tokenizer, batch, max_new_tokens)  # float32, as pretrained
        for i, text in zip(index, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            replies[i] = text.strip()
    return replies


ORACLES = ("resolved", "preferences", "none")


def copy_probe(
    tokenizer, model, speakers: int = 150, dialogues: int = 2, batch_size: int = 32, max_new_tokens: int = 48
) -> dict[str, dict[str, float]]:
    """{oracle: {...}} for each of ORACLES: `param_f1` (mean over scored turns), `turns` and
    `param_recall/<device>.<parameter>`. `tokenizer` pads on the left."""
    personas, rows, *_ = simulate(speakers, dialogues, PROBE_SEED, "neutral", "probe")
    users = {p.persona_id: p for p in personas}
    references = [row["turns"][1]["text"] for row in rows]
    results = {}
    for oracle in ORACLES:
        prompts = []
        for row in rows:
            user = users[row["persona_id"]]
            preferences = user.preferences() if oracle == "preferences" else None
            system = system_text(row, user.name, preferences, resolved=oracle == "resolved")
            messages = [{"role": "system", "content": system}, {"role": "user", "content": row["turns"][0]["text"]}]
            prompts.append(chat_ids(tokenizer, messages, generation_prompt=True))
        replies = _replies(tokenizer, model, prompts, batch_size, max_new_tokens)
        f1 = [s["param_f1"] for s in map(structured_scores, references, replies) if s["param_f1"] is not None]
        recall = {f"param_recall/{k}": v for k, v in parameter_recall(references, replies).items()}
        mean = sum(f1) / len(f1) if f1 else float("nan")  # nan: no request set anything
        results[oracle] = {"param_f1": mean, "turns": len(rows), **recall}
    return results
