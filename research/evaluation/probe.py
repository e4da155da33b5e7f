"""The copy probe: does a base model use the settings its system turn states?

Held-out neutral speakers (drawn with a seed pretraining never used) make one request
each dialogue; the base answers zero-shot, once told the speaker's settings in the system
turn and once not. Per parameter, the share of reference settings the reply gets right.
It takes seconds and trains nothing, so a new base recipe can be judged before the
instrument's LoRA runs (`research probe`, and printed after `research base`). The gap
between the two columns is what the base takes from its prompt.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from research.data.simulator import simulate
from research.datamodules.prompts import system_text
from research.evaluation.metrics import parameter_recall, structured_scores

PROBE_SEED = 424_242  # not the neutral population's (seed + 1_000_003) nor the personas'


def _replies(tokenizer, model, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    replies = []
    model.eval()
    for start in tqdm(range(0, len(prompts), batch_size), desc="copy probe", unit="batch", leave=False):
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        replies += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [reply.strip() for reply in replies]


def copy_probe(
    tokenizer, model, speakers: int = 150, dialogues: int = 2, batch_size: int = 32, max_new_tokens: int = 48
) -> dict[str, dict[str, float]]:
    """{"told": {...}, "not_told": {...}}: each with `param_f1` (mean over scored turns),
    `turns` and `param_recall/<device>.<parameter>`. `tokenizer` pads on the left."""
    personas, rows, *_ = simulate(speakers, dialogues, PROBE_SEED, "neutral", "probe")
    users = {p.persona_id: p for p in personas}
    references = [row["turns"][1]["text"] for row in rows]
    results = {}
    for told in (True, False):
        prompts = []
        for row in rows:
            user = users[row["persona_id"]]
            system = system_text(row, user.name, user.preferences() if told else None)
            messages = [{"role": "system", "content": system}, {"role": "user", "content": row["turns"][0]["text"]}]
            prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        replies = _replies(tokenizer, model, prompts, batch_size, max_new_tokens)
        f1 = [s["param_f1"] for s in map(structured_scores, references, replies) if s["param_f1"] is not None]
        recall = {f"param_recall/{k}": v for k, v in parameter_recall(references, replies).items()}
        mean = sum(f1) / len(f1) if f1 else float("nan")  # nan: no request set anything
        results["told" if told else "not_told"] = {"param_f1": mean, "turns": len(rows), **recall}
    return results
