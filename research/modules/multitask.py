"""Multi-task: unified LoRA trained with auxiliary heads on its last hidden state (the
study's strategy 6): which persona is speaking (classification), which devices the
dialogue's replies act on (multi-label), and the numeric values they set (regression,
each scaled to its range in the domain). Loss = LM + persona_weight * CE +
device_weight * BCE + numeric_weight * MSE; the seed's weights (1.0 generation, 0.1
persona, 0.05 devices) are the defaults, and the numeric head, which the seed does not
weigh, takes the devices' 0.05.

One auxiliary example per assistant turn: the heads read the mean of the hidden states
over what the model has read before that reply starts (system turn, user turns, earlier
replies' template tokens; no reply token, so a reply that states its settings never
feeds a head), and predict that reply's recorded actions. With the user's name in the
system turn, the persona head can read it from there. Targets come from the training
dialogues only; val/loss stays the LM loss, so early stopping watches generation. Only
the generation path is used at inference: the heads are not exported (plain LoRA).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn

from research.data.domain import DEVICES, NUMERIC_PARAMETERS
from research.modules.base import AdaptationModule, Needs
from research.modules.unified_lora import UnifiedLoraConfig

# (device, parameter) of every numeric setting, and each one's range
NUMERIC = [(d, p) for d, params in DEVICES.items() for p in params if p in NUMERIC_PARAMETERS]
DEVICE_NAMES = list(DEVICES)


@dataclass
class MultitaskConfig(UnifiedLoraConfig):
    persona_weight: float = field(default=0.1, metadata={"min": 0})
    device_weight: float = field(default=0.05, metadata={"min": 0})
    numeric_weight: float = field(default=0.05, metadata={"min": 0})


def turn_targets(actions: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """(devices acted on, 0/1 per DEVICE_NAMES; each numeric setting's value scaled to
    [0, 1]; 1 where it was set), from one reply's recorded actions."""
    devices = [0.0] * len(DEVICE_NAMES)
    values, present = [0.0] * len(NUMERIC), [0.0] * len(NUMERIC)
    for action in actions:
        devices[DEVICE_NAMES.index(action["device"])] = 1.0
        key = (action["device"], action["parameter"])
        if key in NUMERIC:
            low, high = DEVICES[key[0]][key[1]]
            i = NUMERIC.index(key)
            values[i], present[i] = (float(action["value"]) - low) / (high - low), 1.0
    return devices, values, present


def before_each_reply(
    hidden: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, turn, mean hidden state) of each reply in the batch: the mean over the tokens
    read before the reply starts, reply tokens (labels != -100) left out."""
    reply = labels != -100
    read = (attention_mask.bool() & ~reply).unsqueeze(-1)
    starts = reply & ~F.pad(reply, (1, 0))[:, :-1]  # each reply's first token
    rows, columns = starts.nonzero(as_tuple=True)
    turns = (starts.cumsum(1) - 1)[rows, columns]  # the reply's rank in its row
    summed, count = (hidden * read).cumsum(1), read.cumsum(1)  # running sums: up to the token before
    return rows, turns, summed[rows, columns - 1] / count[rows, columns - 1].clamp(min=1)


class MultitaskModule(AdaptationModule):
    config_class = MultitaskConfig
    adapter_kind = "lora"

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(actions=True)

    def __init__(self, model, tokenizer, train, args: MultitaskConfig, provided) -> None:
        hidden = model.config.hidden_size
        super().__init__(get_peft_model(model, args.peft_config()), tokenizer, train, args)
        with torch.random.fork_rng():  # the heads draw nothing from the LoRA run's generator:
            # with every weight 0 this trains exactly unified_lora (a test)
            self.persona_head = nn.Linear(hidden, len(provided.persona_ids))
            self.device_head = nn.Linear(hidden, len(DEVICE_NAMES))
            self.numeric_head = nn.Linear(hidden, len(NUMERIC))
        self.targets = {dialogue: [turn_targets(a) for a in turns] for dialogue, turns in provided.actions.items()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            output_hidden_states=True,
        )
        rows, turns, pooled = before_each_reply(out.hidden_states[-1].float(), batch["labels"], batch["attention_mask"])
        dialogues = [batch["dialogue_id"][r] for r in rows.tolist()]
        turns = turns.tolist()
        devices, values, present = (
            torch.tensor([self.targets[d][t][i] for d, t in zip(dialogues, turns, strict=True)], device=pooled.device)
            for i in range(3)
        )
        persona_loss = F.cross_entropy(self.persona_head(pooled), batch["persona_idx"][rows])
        device_loss = F.binary_cross_entropy_with_logits(self.device_head(pooled), devices)
        numeric_loss = ((self.numeric_head(pooled) - values) ** 2 * present).sum() / present.sum().clamp(min=1)
        args, size = self.args, batch["input_ids"].shape[0]
        loss = (
            out.loss
            + args.persona_weight * persona_loss
            + args.device_weight * device_loss
            + args.numeric_weight * numeric_loss
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        # the parts as epoch means: what a comparison across runs reads
        for name, value in (
            ("lm_loss", out.loss),
            ("persona_loss", persona_loss),
            ("device_loss", device_loss),
            ("numeric_loss", numeric_loss),
        ):
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def save_adapter(self, directory) -> None:
        self.model.save_pretrained(directory)
