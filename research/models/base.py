"""The shared base model: a tiny Llama-architecture causal LM the project trains itself.

`pretrain` trains a byte-level BPE tokenizer and the LM on the persona-neutral
population and saves both as one Hugging Face directory; `load_base` loads that
directory, or any hub name such as Qwen/Qwen2.5-0.5B-Instruct, through the Auto
classes, and fails fast with a clear message when a hub name cannot be reached.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from research.config import PROBABILITY, SEED, ConfigError
from research.data.domain import DEVICES
from research.data.generate import vocabulary_lines
from research.data.schema import load_dataset
from research.datamodules.persona import encode_conversation
from research.datamodules.prompts import conversation, system_text

# Qwen2.5's chat format, so prompts look the same to the tiny model and the real one.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The default base, shipped in the repository (config: base_model); its card is base/README.md.
# `research base` reproduces it from code into models/base.
SHIPPED_BASE = "base"


@dataclass
class BaseConfig:
    """Pretraining renders each neutral dialogue's system turn with, drawn at random, the
    speaker's name, their stated settings and a few of their earlier exchanges (or none of
    them), so that reading and copying from context is learned before any persona is seen."""

    vocab_size: int = field(default=1024, metadata={"min": 256 + len(SPECIAL_TOKENS)})  # the bytes, then merges
    hidden_size: int = field(default=256, metadata={"min": 1})
    num_layers: int = field(default=4, metadata={"min": 1})
    num_heads: int = field(
        default=4, metadata={"min": 1, "check": (lambda v, c: c.hidden_size % v == 0, "divides hidden_size")}
    )
    num_kv_heads: int = field(
        default=2, metadata={"min": 1, "check": (lambda v, c: c.num_heads % v == 0, "divides num_heads")}
    )
    intermediate_size: int = field(default=704, metadata={"min": 1})
    max_length: int = field(default=256, metadata={"min": 16})
    epochs: int = field(default=6, metadata={"min": 1})
    batch_size: int = field(default=32, metadata={"min": 1})
    lr: float = field(default=3e-3, metadata={"gt": 0})
    seed: int = field(default=0, metadata=SEED)
    # "all": every token of the chat text; "assistant": the replies only (as in instruction
    # tuning), so the random settings in system turns are read, never predicted. Measured:
    # told the preferences, the zero-shot base copied a name 33/40 with "assistant", 0/40 with "all"
    loss_on: Literal["all", "assistant"] = "assistant"
    p_name: float = field(default=0.5, metadata=PROBABILITY)  # share of dialogues whose system turn names the speaker
    # ... states the settings the dialogue's replies make (resolved for its context and requests,
    # so copying a stated value is always right), or else the speaker's raw preferences (which
    # the context arithmetic changes in most brightness and temperature replies). The shipped
    # recipe states resolved settings only: the probe told resolved read 0.93 (4 epochs) and
    # 0.95 (6 epochs) so, against 0.85 with p_resolved 0.5 and p_preferences 0.3 (docs/results.md)
    p_resolved: float = field(default=0.8, metadata=PROBABILITY)
    p_preferences: float = field(
        default=0.0,
        metadata={**PROBABILITY, "check": (lambda v, cfg: v + cfg.p_resolved <= 1, "p_resolved + p_preferences <= 1")},
    )
    # ... quotes 1..max_history of the speaker's earlier exchanges
    p_history: float = field(default=0.3, metadata=PROBABILITY)
    max_history: int = field(default=3, metadata={"min": 1})
    # share of the dialogues told resolved settings whose RELABELED values are permuted at random
    # (relabel): then only reading the stated value is right, and every value is read equally
    # often. Measured without it: the rarest parameter, genre, read 0.27-0.85 by seed and epochs,
    # its rarest value (classical) never once (docs/notes/base-candidates.md)
    p_relabel: float = field(default=0.0, metadata=PROBABILITY)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(cfg: BaseConfig, tokenizer):
    # Llama, not Qwen2: transformers 5 loads any `qwen2` directory with Qwen2Tokenizer, which
    # swaps in Qwen's digit-by-digit pre-tokenizer, so a model trained on " 80" as one token
    # was fine-tuned and evaluated on " ", "8", "0" (see check_tokenizer_round_trip).
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(512, cfg.max_length),
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


# Batch widths are rounded up to a multiple of this: every new shape costs the CPU kernels
# a fresh set-up and memory (measured: 1.1 s/step and RSS growing past 4 GB with exact
# widths, against ~0.4 s/step with a handful of shapes).
PAD_MULTIPLE = 32


def length_grouped_batches(sequences: list, batch_size: int, generator: torch.Generator, pool: int = 64):
    """Shuffled batches of sequences of similar length: random pools of `pool` batches are
    sorted by length and cut into batches, whose order is shuffled again. With random
    batches half of every batch was padding (49% of tokens real on the neutral data); grouped, 1%."""
    order = torch.randperm(len(sequences), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: len(sequences[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield [sequences[i] for i in batches[b]]


def pretrain(cfg: BaseConfig, conversations: list[list[dict]], vocabulary: list[str], out_dir: str | Path) -> dict:
    """Tokenizer + LM on `conversations` (chat messages); `vocabulary` lines make sure
    every word personas use has been seen, or its embedding stays noise.

    In float32, not bf16 autocast: CPUs with AMX, with avx512_bf16 and without either round
    bf16 differently (the same seed gave two different bases on two machines), and a CPU
    without bf16 units multiplies bf16 matrices ~50x slower than float32 (1.9 against 93
    GFLOP/s measured on an AVX2 EPYC)."""
    texts = ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conv) for conv in conversations]
    tokenizer = train_tokenizer(texts + vocabulary, cfg.vocab_size)
    model = make_model(cfg, tokenizer)
    # (ids, labels): the loss on every token, or on the assistant's replies only
    sequences = []
    for conv in conversations:
        ids, reply_labels, _ = encode_conversation(tokenizer, conv)
        labels = reply_labels if cfg.loss_on == "assistant" else ids
        sequences.append((ids[: cfg.max_length], labels[: cfg.max_length]))
    sequences += [(ids, ids) for ids in (tokenizer(line)["input_ids"][: cfg.max_length] for line in vocabulary)]
    generator = torch.Generator().manual_seed(cfg.seed)
    total = cfg.epochs * math.ceil(len(sequences) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    )
    model.train()
    start, loss_value = time.perf_counter(), float("nan")
    with tqdm(total=total, desc="pretrain base", unit="step") as bar:
        for _ in range(cfg.epochs):
            for batch in length_grouped_batches(sequences, cfg.batch_size, generator):
                width = -(-max(len(seq) for seq, _ in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
                ids = torch.full((len(batch), width), tokenizer.pad_token_id)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100)
                for row, (seq, seq_labels) in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    labels[row, : len(seq)] = torch.tensor(seq_labels)
                    mask[row, : len(seq)] = 1
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = loss.item()
                bar.set_postfix(loss=f"{loss_value:.3f}")
                bar.update()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    check_tokenizer_round_trip(tokenizer, staging, texts[:200] + vocabulary)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return {
        "final_loss": loss_value,
        "seconds": time.perf_counter() - start,
        "parameters": model.num_parameters(),
        "tokens_per_epoch": sum(len(seq) for seq, _ in sequences),
    }


def check_tokenizer_round_trip(tokenizer, directory: str | Path, texts: list[str]) -> None:
    """Raise unless the tokenizer that `load_base` reads from `directory` encodes `texts`
    exactly as `tokenizer` (the one the weights were trained with) does: a loader that
    rewrites the pre-tokenizer would silently feed the model token sequences it never saw."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(directory)
    for text in texts:
        expected, got = tokenizer(text)["input_ids"], loaded(text)["input_ids"]
        if expected != got:
            raise RuntimeError(
                f"{directory}: the saved tokenizer loads as {type(loaded).__name__} and encodes differently "
                f"from the one the model was trained with; on {text[:60]!r}: trained "
                f"{tokenizer.convert_ids_to_tokens(expected)[:12]}, loaded {loaded.convert_ids_to_tokens(got)[:12]}"
            )


# The categorical settings no request names (requests never say "jazz" or "daylight"), only the
# replies do, so relabeling them keeps every dialogue coherent. AC mode and lock state stay:
# "I'm freezing" or "lock the door" decides them.
RELABELED = (("lights", "color"), ("speaker", "genre"))


def relabel(row: dict, rng: random.Random) -> dict:
    """`row` with the values of each RELABELED parameter permuted at random over its domain,
    in the replies' actions and their text (whole words)."""
    mapping = {}
    for device, parameter in RELABELED:
        values = list(DEVICES[device][parameter])
        mapping.update(zip(values, rng.sample(values, len(values)), strict=True))
    word = re.compile(r"\b(" + "|".join(mapping) + r")\b")

    def turn(t: dict) -> dict:
        if t["role"] != "assistant":
            return t
        actions = [
            a | {"value": mapping[a["value"]]} if (a["device"], a["parameter"]) in RELABELED else a
            for a in t["actions"]
        ]
        return t | {"text": word.sub(lambda m: mapping[m.group(1)], t["text"]), "actions": actions}

    return row | {"turns": [turn(t) for t in row["turns"]]}


def pretraining_conversations(personas, dialogues, cfg: BaseConfig) -> list[list[dict]]:
    """Each dialogue as chat messages, its system turn told at random what an assistant may
    know: the speaker's name, the settings of this dialogue's replies or the speaker's
    preferences, earlier exchanges (first request and reply of their previous dialogues,
    oldest first), any mix of these, or nothing."""
    rng = random.Random(cfg.seed)
    relabeling = random.Random(f"relabel {cfg.seed}")  # its own stream: p_relabel=0 leaves the rest as it was
    users = {row["persona_id"]: row for row in personas.iter_rows(named=True)}
    past: dict[str, list[tuple[str, str]]] = defaultdict(list)
    conversations = []
    for row in dialogues.sort("persona_id", "timestamp").iter_rows(named=True):
        user, earlier = users[row["persona_id"]], past[row["persona_id"]]
        name = user["name"] if rng.random() < cfg.p_name else None
        stated = rng.random()
        resolved = stated < cfg.p_resolved
        preferences = user["preferences"] if cfg.p_resolved <= stated < cfg.p_resolved + cfg.p_preferences else None
        history = []
        if earlier and rng.random() < cfg.p_history:
            picked = sorted(rng.sample(range(len(earlier)), min(len(earlier), rng.randint(1, cfg.max_history))))
            history = [earlier[i] for i in picked]
        shown = relabel(row, relabeling) if resolved and relabeling.random() < cfg.p_relabel else row
        conversations.append(conversation(shown, system_text(shown, name, preferences, history, resolved=resolved)))
        earlier.append((row["turns"][0]["text"], row["turns"][1]["text"]))
    return conversations


def pretrain_from_dataset(data_dir: str | Path, out_dir: str | Path, cfg: BaseConfig) -> dict:
    """Pretrain on a (persona-neutral) dataset directory."""
    personas, dialogues = load_dataset(data_dir)
    conversations = pretraining_conversations(personas, dialogues, cfg)
    return pretrain(cfg, conversations, vocabulary_lines() + personas["description"].to_list(), out_dir)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_local(name_or_path: str, what: str = "base model") -> None:
    """Raise at once, with the reason, if `name_or_path` is neither a local directory,
    nor in the Hugging Face cache, nor downloadable (no network)."""
    if Path(name_or_path).exists():
        if not (Path(name_or_path) / "config.json").is_file():
            raise ConfigError(f"{what} {name_or_path!r} is not a Hugging Face model directory (it has no config.json)")
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name_or_path, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - anything here means "not cached"
        pass
    if not _hub_reachable():
        raise ConfigError(
            f"{what} {name_or_path!r} is not a local directory, not in the Hugging Face cache, and the hub "
            f"cannot be reached from this machine. Pass a local directory (the shipped {SHIPPED_BASE}, or one "
            "`research base --out DIR` pretrains), or download it where there is network and copy the cache here."
        )


def check_base(name_or_path: str) -> None:
    """Raise at once, with the reason, unless `name_or_path` can be loaded as a base: a local
    directory (whose files match its card's fingerprint, when it has a card), a cached or
    a reachable hub name."""
    require_local(name_or_path)
    card = read_card(name_or_path)
    if card and (found := base_fingerprint(name_or_path)) != card["fingerprint"]:
        raise ConfigError(
            f"base_model={name_or_path}: its files hash to {found}, its card ({name_or_path}/{CARD}) says "
            f"{card['fingerprint']}: they were changed or damaged (or are Git LFS pointers). Restore them "
            f"(git checkout -- {name_or_path}) or pretrain a base of your own with `research base --out DIR`"
        )


def load_base(name_or_path: str, dtype: torch.dtype | None = None):
    """(tokenizer, model) through the Auto classes; left padding for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_base(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    return tokenizer, model


def base_fingerprint(name_or_path: str) -> str:
    """Content hash of a local model directory's config, tokenizer and weights (not its card);
    the name for a hub model."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


# A base directory's model card: YAML front matter (what `check_base` and `research base`
# read) above the same facts for people, as on the Hugging Face hub.
CARD = "README.md"


def write_card(directory: str | Path, facts: dict) -> None:
    """`facts`: fingerprint, recipe (BaseConfig), data (dir, fingerprint), parameters,
    pretraining (seconds, machine, threads, torch) and probe (research.evaluation.probe)."""
    import yaml

    lines = [
        "---",
        yaml.safe_dump(facts, sort_keys=False).strip(),
        "---",
        "",
        "# persona-lab tiny base",
        "",
        f"A {facts['parameters'] / 1e6:.1f}M-parameter Llama-architecture causal LM with its byte-level BPE "
        f"tokenizer, pretrained by `research base` on the persona-neutral population of `research data generate` "
        f"(dataset {facts['data']['fingerprint']}) in {facts['pretraining']['seconds'] / 60:.1f} minutes on "
        f"{facts['pretraining']['machine']} ({facts['pretraining']['threads']} threads, torch "
        f"{facts['pretraining']['torch']}). Fingerprint {facts['fingerprint']}.",
        "",
        "Recipe: " + ", ".join(f"`{k}={v}`" for k, v in facts["recipe"].items()) + ".",
    ]
    if facts.get("probe"):
        probe = facts["probe"]
        oracles = list(probe)
        keys = ["param_f1", *sorted(k for k in probe[oracles[0]] if k.startswith("param_recall/"))]
        lines += [
            "",
            f"Copy probe (`research probe`: {probe[oracles[0]]['turns']} held-out neutral requests, zero-shot), "
            "by what the system turn states:",
            "",
            "| | " + " | ".join(f"told {o}" for o in oracles) + " |",
            "| --- |" + " --- |" * len(oracles),
            *(
                f"| {k.removeprefix('param_recall/')} | " + " | ".join(f"{probe[o][k]:.2f}" for o in oracles) + " |"
                for k in keys
            ),
        ]
    Path(directory, CARD).write_text("\n".join(lines) + "\n")


def read_card(directory: str | Path) -> dict | None:
    """The facts `write_card` wrote, or None for a directory without a card (or a hub name)."""
    import yaml

    path = Path(directory, CARD)
    if not path.is_file():
        return None
    text = path.read_text()
    if not text.startswith("---\n"):
        return None
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])
