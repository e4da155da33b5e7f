"""The shared base model: a tiny Qwen2-architecture causal LM the project trains itself.

`pretrain` trains a byte-level BPE tokenizer and the LM on the persona-neutral
population and saves both as one Hugging Face directory; `load_base` loads that
directory, or any hub name such as Qwen/Qwen2.5-0.5B-Instruct, through the Auto
classes, and fails fast with a clear message when a hub name cannot be reached.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

# Qwen2.5's chat format, so prompts look the same to the tiny model and the real one.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass
class BaseConfig:
    """Measured here (2 CPU cores): 3 epochs over the neutral population take ~8 minutes and
    end at loss 0.42. One epoch (loss 0.50) left a base that mostly ignored the request, so
    that unified LoRA scored below no adaptation (test emb_sim 0.607 vs 0.618); after 3 epochs
    no adaptation scores 0.654 and unified 0.679."""

    vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704
    max_length: int = 256
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


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
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
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
    return Qwen2ForCausalLM(config)


def pretrain(cfg: BaseConfig, conversations: list[list[dict]], vocabulary: list[str], out_dir: str | Path) -> dict:
    """Tokenizer + LM on `conversations` (chat messages); `vocabulary` lines make sure
    every word personas use has been seen, or its embedding stays noise."""
    from research.datamodules.persona import encode_conversation

    texts = ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conv) for conv in conversations]
    tokenizer = train_tokenizer(texts + vocabulary, cfg.vocab_size)
    model = make_model(cfg, tokenizer)
    sequences = [encode_conversation(tokenizer, conv)[0][: cfg.max_length] for conv in conversations]
    sequences += [tokenizer(line)["input_ids"][: cfg.max_length] for line in vocabulary]
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(sequences) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    )
    model.train()
    start, loss_value = time.perf_counter(), float("nan")
    with tqdm(total=total, desc="pretrain base", unit="step") as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(len(sequences), generator=generator).tolist()
            for i in range(0, len(order), cfg.batch_size):
                batch = [sequences[j] for j in order[i : i + cfg.batch_size]]
                width = max(map(len, batch))
                ids = torch.full((len(batch), width), tokenizer.pad_token_id)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, seq in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                labels = ids.masked_fill(mask == 0, -100)
                with torch.autocast("cpu", dtype=torch.bfloat16):
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
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return {"final_loss": loss_value, "seconds": time.perf_counter() - start, "parameters": model.num_parameters()}


def pretrain_from_dataset(data_dir: str | Path, out_dir: str | Path, cfg: BaseConfig) -> dict:
    """Pretrain on a (persona-neutral) dataset directory."""
    from research.data.generate import vocabulary_lines
    from research.data.schema import load_dataset
    from research.datamodules.persona import conversation, system_text

    personas, dialogues = load_dataset(data_dir)
    conversations = [conversation(row, system_text(row)) for row in dialogues.iter_rows(named=True)]
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
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name_or_path, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - anything here means "not cached"
        pass
    if not _hub_reachable():
        raise FileNotFoundError(
            f"{what} {name_or_path!r} is not a local directory, not in the Hugging Face cache, and the hub "
            "cannot be reached from this machine. Pass a local directory (e.g. models/base from "
            "`research base`), or download it where there is network and copy the cache here."
        )


def load_base(name_or_path: str, dtype: torch.dtype | None = None):
    """(tokenizer, model) through the Auto classes; left padding for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_local(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    return tokenizer, model


def base_fingerprint(name_or_path: str) -> str:
    """Content hash of a local model directory's config and weights; the name for a hub model."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
