"""Selective routing: each persona to the method that served it best on validation,
unified when no candidate beats unified by more than `margin`; evaluated on test like
any method, its routed adapters in mixed batches. Its adapters export as one grouped
model (groups.json), so it registers and promotes like any other.

A meta-classifier (scikit-learn logistic regression) then predicts, from what is
known of a persona before any personalization (description embedding and behaviour
statistics of its training dialogues), whether it benefits; scored by stratified
cross-validation on held-out personas and logged with the fitted classifier, so a new
user can be routed without validation data of their own. `meta/new_user_gain_val_<metric>`
routes every persona that way, each by a classifier that never saw it, and measures the
val gain over unified. Only val scores steer it.

The margin is tuned on data the routing did not choose with: `val/crossfit_<metric>`
splits each persona's val dialogues into two halves (alternating in time), routes on one
half and scores the chosen runs on the other, both ways round. Routing and scoring on the
same val split would always favour margin ~0; the sweep optimises the cross-fitted score.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import polars as pl

from research.config import ConfigError
from research.modules.base import Needs, read_manifest
from research.modules.group_lora import GroupLoraModule, engine_shape, load_group, read_adapter


@dataclass
class SelectiveRoutingConfig:
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})
    # finished runs of any adapter method to route to (comma-separated run ids)
    candidate_runs: tuple[str, ...] = field(default=(), metadata={"source_method": "*"})
    metric: str = field(default="embedding_similarity", metadata={"metric": "per_persona"})  # val metric that decides
    margin: float = 0.0  # a candidate must beat unified on val by more than this
    meta_folds: int = field(default=5, metadata={"min": 2})  # cross-validation folds of the meta-classifier
    # description embeddings for the meta-classifier; empty: bundled MiniLM
    embedder: str = field(default="", metadata={"embedder": True})


def val_scores(artifacts: Path, metric: str) -> dict[str, float]:
    table = pl.read_parquet(artifacts / "per_persona.parquet").filter(pl.col("split") == "val")
    return dict(zip(table["persona_id"], table[metric], strict=True))


def val_halves(artifacts: Path, metric: str) -> dict[str, tuple[float, float]]:
    """persona -> mean `metric` on each half of its val dialogues (alternating in time); a
    half without a scored turn takes the persona's mean over both."""
    turns = pl.read_parquet(artifacts / "predictions.parquet").filter(pl.col("split") == "val")
    order = turns.select("persona_id", "dialogue_id").unique().sort("persona_id", "dialogue_id")
    order = order.with_columns(half=pl.int_range(pl.len()).over("persona_id") % 2)
    turns = turns.join(order, on=["persona_id", "dialogue_id"])
    overall = dict(turns.group_by("persona_id").agg(pl.col(metric).mean()).iter_rows())
    means = {(p, h): v for p, h, v in turns.group_by("persona_id", "half").agg(pl.col(metric).mean()).iter_rows()}
    return {p: tuple(overall[p] if means.get((p, h)) is None else means[(p, h)] for h in (0, 1)) for p in overall}


def crossfit_score(halves: dict[str, dict[str, tuple[float, float]]], unified: str, margin: float) -> float:
    """Mean over personas of the score, on one half of val, of the run routed to on the
    other half (both ways round): what routing with `margin` gains on unseen dialogues."""
    values = []
    for chosen_on, scored_on in ((0, 1), (1, 0)):
        scores = {run: {p: h[chosen_on] for p, h in per.items()} for run, per in halves.items()}
        proposal = routing_proposal(scores, unified, margin)
        values.extend(halves[run][p][scored_on] for p, run in proposal.items())
    return float(np.mean(values))


def routing_proposal(scores: dict[str, dict[str, float]], unified: str, margin: float) -> dict[str, str]:
    """persona -> the run whose val score is best, unless it beats `unified` by `margin` or less."""
    proposal = {}
    for persona, baseline in scores[unified].items():
        best = max((run for run in scores if run != unified), key=lambda run: scores[run][persona])
        proposal[persona] = best if scores[best][persona] > baseline + margin else unified
    return proposal


def meta_classifier(features: np.ndarray, benefits: np.ndarray, folds: int, seed: int = 0):
    """(held-out metrics, classifier fitted on all personas, each persona's prediction by a
    classifier that did not see it) for `benefits` from `features`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    minority = int(min(benefits.sum(), len(benefits) - benefits.sum()))
    metrics = {
        "meta/benefit_share": float(benefits.mean()),
        "meta/majority_accuracy": float(max(benefits.mean(), 1 - benefits.mean())),
    }
    if minority < 2:  # nothing to learn: every persona is on the same side
        return metrics, None, None
    splitter = StratifiedKFold(n_splits=min(folds, minority), shuffle=True, random_state=seed)
    held_out = cross_val_predict(classifier, features, benefits, cv=splitter)
    metrics["meta/accuracy"] = float((held_out == benefits).mean())
    metrics["meta/balanced_accuracy"] = float(balanced_accuracy_score(benefits, held_out))
    return metrics, classifier.fit(features, benefits), held_out


def new_user_gain(scores: dict, proposal: dict[str, str], unified: str, predicted: dict[str, bool], serves) -> float:
    """Mean val gain over unified when each persona is routed as a new user would be: by
    `predicted` (from classifiers that did not see it) to the run most *other* personas were
    routed to, if that run's adapter `serves(run, persona)`, else to unified."""
    gains = []
    for persona in proposal:
        others = {p: run for p, run in proposal.items() if p != persona}
        run = route_new_users(others, unified, {persona: predicted[persona]})[persona]
        run = run if serves(run, persona) else unified
        gains.append(scores[run][persona] - scores[unified][persona])
    return float(np.mean(gains))


def _serves(artifacts: Path, persona: str) -> bool:
    """Whether a run's adapter can answer `persona`: a shared one, or a group holding it."""
    groups = artifacts / "adapter" / "groups.json"
    return not groups.exists() or persona in json.loads(groups.read_text())


def route_new_users(proposal: dict[str, str], unified: str, predicted: dict[str, bool]) -> dict[str, str]:
    """Personas without val history: to the run most personas were routed to where the
    meta-classifier predicts a benefit, else to unified."""
    chosen = [run for run in proposal.values() if run != unified]
    default = max(sorted(set(chosen)), key=chosen.count) if chosen else unified
    return {persona: default if benefits else unified for persona, benefits in predicted.items()}


class SelectiveRoutingModule(GroupLoraModule):
    config_class = SelectiveRoutingConfig
    trainable = False

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(persona_features=args.embedder)

    def __init__(self, model, tokenizer, train, args: SelectiveRoutingConfig, provided) -> None:
        sources = {s.run_id: s for s in provided.sources["unified_run"] + provided.sources["candidate_runs"]}
        for source in sources.values():  # it routes between LoRA weights: prompts or context would be lost
            if (kind := read_manifest(source.artifacts / "adapter")["kind"]) != "lora":
                raise ConfigError(
                    f"method_args.candidate_runs: run {source.run_id} ({source.method}) has adapter kind {kind!r}; "
                    "selective_routing routes between LoRA adapters only"
                )
        unified = provided.source("unified_run").run_id
        scores = {run: val_scores(source.artifacts, args.metric) for run, source in sources.items()}
        proposal = routing_proposal(scores, unified, args.margin)
        # the meta-classifier learns who benefits from the personas with val history, and
        # routes those without any (new users) to the run most personas were routed to
        known = [i for i, p in enumerate(provided.persona_ids) if p in proposal]
        benefits = np.array([proposal[provided.persona_ids[i]] != unified for i in known])
        features = provided.persona_features
        self.meta_metrics, self.classifier, held_out = meta_classifier(features[known], benefits, args.meta_folds)
        if held_out is not None:  # each persona routed as a new user would be, by a classifier that never saw it
            predicted = {provided.persona_ids[i]: bool(b) for i, b in zip(known, held_out, strict=True)}
            self.meta_metrics[f"meta/new_user_gain_val_{args.metric}"] = new_user_gain(
                scores, proposal, unified, predicted, lambda run, p: _serves(sources[run].artifacts, p)
            )
        new_users = [i for i, p in enumerate(provided.persona_ids) if p not in proposal]
        if self.classifier is not None:
            benefit = self.classifier.predict(features[new_users]) if new_users else []
        else:  # every known persona on one side: new users go that way too
            benefit = [bool(benefits.mean() > 0.5)] * len(new_users)
        routed_new = route_new_users(
            proposal, unified, {provided.persona_ids[i]: bool(b) for i, b in zip(new_users, benefit, strict=True)}
        )
        routed_new = {p: run if _serves(sources[run].artifacts, p) else unified for p, run in routed_new.items()}
        self.meta_metrics["routing/personalised_share"] = float(benefits.mean())
        self.meta_metrics["routing/new_users"] = len(new_users)
        halves = {run: val_halves(source.artifacts, args.metric) for run, source in sources.items()}
        self.meta_metrics[f"val/crossfit_{args.metric}"] = crossfit_score(halves, unified, args.margin)
        routes = proposal | routed_new
        groups, adapters = {}, {}
        for persona, run in routes.items():
            directory = sources[run].artifacts / "adapter"
            served = directory / "groups.json"
            subdir = json.loads(served.read_text())[persona] if served.exists() else ""
            groups[persona] = f"{sources[run].method}-{run[:8]}-{subdir or 'shared'}"
            adapters.setdefault(groups[persona], directory / subdir)
        factors = {name: read_adapter(path)[1] for name, path in adapters.items()}
        targets, rank = engine_shape(list(factors.values()))
        super().__init__(model, tokenizer, train, args, provided, groups, (targets, rank, rank, 0.0))
        for g, name in enumerate(self.group_names):
            load_group(self.layers, g, factors[name])
        self.table = pl.DataFrame(
            {
                "persona_id": list(routes),
                "method": [sources[run].method for run in routes.values()],
                "run_id": list(routes.values()),
                "val_gain": [
                    scores[run][p] - scores[unified][p] if p in proposal else None for p, run in routes.items()
                ],
                "routed_by": ["val" if p in proposal else "meta-classifier" for p in routes],
            }
        )

    def outputs(self):
        artifacts = {"routing_proposal.parquet": self.table}
        if self.classifier is not None:
            buffer = io.BytesIO()
            joblib.dump(self.classifier, buffer)
            artifacts["meta_classifier.joblib"] = buffer.getvalue()
        return self.meta_metrics, artifacts
