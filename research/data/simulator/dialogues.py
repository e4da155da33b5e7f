"""Dialogues: a request (and maybe a follow-up) in a sampled context, each reply planned
from the persona's preferences and worded in its style. The same turns re-worded from
other personas' preferences (`alternates`) give the oracle headroom."""

from __future__ import annotations

import random
from dataclasses import asdict
from datetime import datetime, timedelta

from research.data.simulator.personas import Persona, average_persona, make_persona, with_signal
from research.data.simulator.planning import follow_up, make_context, plan_actions
from research.data.simulator.tables import FOLLOW_UP_PARAMETER, FOLLOW_UP_TEXT, INTENT_WEIGHTS, INTENTS, USER_TEXT
from research.data.simulator.wording import render_reply, user_text


def make_dialogue(
    rng: random.Random,
    persona: Persona,
    dialogue_id: str,
    when: datetime,
    alternates=(),
    intent_weights: tuple[float, ...] = INTENT_WEIGHTS,
):
    """One dialogue as a schema row; `alternates` are (persona, rng) pairs that re-word
    every assistant turn (same actions planned from their own preferences)."""
    ctx = make_context(rng, when)
    intent = rng.choices(INTENTS, weights=intent_weights)[0]
    slots = {"value": rng.randint(1, 10) * 10, "feel": "cold" if ctx.temperature_c < 18 else "warm"}
    turns, rewordings = [], [[] for _ in alternates]
    exchanges = [(intent, rng.choice(USER_TEXT[intent]))]
    if rng.random() < 0.6:
        # a follow-up that makes sense after this request: "brighter" only when lights were set
        first = {a[1] for a in plan_actions(intent, persona, ctx, slots)}
        options = [k for k, param in FOLLOW_UP_PARAMETER.items() if param in first] + ["thanks"]
        kind = rng.choice(options)
        exchanges.append((kind, FOLLOW_UP_TEXT[kind]))
    previous = {None: []}
    for step, (kind, template) in enumerate(exchanges):
        turns.append({"role": "user", "text": user_text(rng, persona, template, **slots), "devices": [], "actions": []})
        for who, (alt, alt_rng) in [(None, (persona, rng)), *enumerate(alternates)]:
            if step == 0:
                actions = plan_actions(kind, alt, ctx, slots)
            elif kind == "thanks":
                actions = []
            else:
                actions = follow_up(kind, previous[who])
            previous[who] = actions
            text = render_reply(alt_rng, alt, actions)
            if who is None:
                turns.append(
                    {
                        "role": "assistant",
                        "text": text,
                        "devices": sorted({a[0] for a in actions}),
                        "actions": [dict(device=d, parameter=p, value=v) for d, p, v in actions],
                    }
                )
            else:
                rewordings[who].append(text)
    row = dict(dialogue_id=dialogue_id, persona_id=persona.persona_id, timestamp=when, **asdict(ctx), turns=turns)
    return row, rewordings


def simulate(
    n_personas: int,
    n_dialogues: int,
    seed: int,
    archetype: str | None = None,
    id_prefix: str = "persona",
    intent_weights: tuple[float, ...] = INTENT_WEIGHTS,
    signal: float = 1.0,
):
    """Personas and their dialogues; also the re-worded assistant turns needed for the
    oracle headroom: (true preferences, population-average preferences) per turn. `signal`
    scales each persona's deviation from the population average (personas.with_signal)."""
    rng = random.Random(seed)
    personas = [make_persona(rng, f"{id_prefix}_{i:03d}", archetype) for i in range(n_personas)]
    if signal != 1.0:  # its own generator: the draws of signal 1 (the default dataset) stay as they were
        drawn, scaling = average_persona(personas), random.Random(f"{seed}/signal")
        personas = [with_signal(p, drawn, signal, scaling) for p in personas]
    average = average_persona(personas)
    start = datetime(2025, 1, 6, 7, 0)
    dialogues, oracle, population = [], [], []
    for persona in personas:
        when = start + timedelta(hours=rng.randint(0, 48))
        for j in range(n_dialogues):
            when += timedelta(hours=rng.randint(6, 60))
            alternates = [(persona, random.Random(rng.random())), (average, random.Random(rng.random()))]
            row, (true_words, average_words) = make_dialogue(
                rng, persona, f"{persona.persona_id}_d{j:02d}", when, alternates, intent_weights
            )
            dialogues.append(row)
            oracle.append(true_words)
            population.append(average_words)
    return personas, dialogues, oracle, population
