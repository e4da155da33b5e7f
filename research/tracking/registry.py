"""Registered adapters and the routing table the assistant answers through.

- `register(run_id)`: the run's `adapter/` artifact becomes a version of the MLflow
  registered model named after the method, tagged with the base model and dataset
  fingerprints; alias `candidate` points at it (aliases, not stages).
- `promote(model, version, personas)`: checks the version exists, was trained on this
  base model, and serves every persona it is promoted for (one shared adapter, or the
  persona's own in groups.json); then writes a new revision of the routing table and
  records the promotion on the version (tag `promoted.<revision>`). A shared adapter
  promoted for `all` becomes the fallback, which unknown personas get; so does the
  `default` of an adapter per persona that has one (user_embedding's mean-vector prompt).
- The table is `routing/table.json`; every revision is also kept, never rewritten, as
  `routing/history/<revision>.json`. Writes hold a file lock, fsync and replace the file
  atomically, so concurrent promotions serialise and no reader sees half a table; a
  checksum catches a table corrupted on disk.
- The table is the truth and the `champion` aliases are derived from it
  (`champion_versions`): each registered model's champion is its newest version the
  table routes to, and a model the table no longer routes to has none. Promotion and
  rollback write the table, then set the aliases, under the same lock; if a crash falls
  between the two, `verify` names the drift and `verify(fix=True)` re-derives the aliases.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_alias_name

from research.config import ConfigError, read_text
from research.modules.base import read_manifest


class RoutingError(ConfigError):
    """A promotion or routing table that cannot be used; the message says why."""


def _client(tracking_uri: str):
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.tracking.MlflowClient(tracking_uri)


def register(tracking_uri: str, run_id: str, alias: str = "candidate"):
    """A new version of the registered model named after the run's method."""
    try:
        _validate_model_alias_name(alias)  # before the version exists: it is never half-registered
    except MlflowException as err:
        raise RoutingError(f"--alias {alias!r}: {err.message}") from None
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise RoutingError(f"run {run_id} does not exist ({tracking_uri})") from err
    if run.info.status != "FINISHED":
        raise RoutingError(f"run {run_id} is {run.info.status}, only a FINISHED run can be registered")
    if not client.list_artifacts(run_id, "adapter"):
        raise RoutingError(f"run {run_id} ({run.data.tags.get('method')}) has no adapter to register")
    name = run.data.tags["method"]
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"adapters of {name} runs (persona-lab)")
    tags = {k: run.data.tags[k] for k in ("method", "dataset", "base_model", "base_fingerprint") if k in run.data.tags}
    version = client.create_model_version(name, f"{run.info.artifact_uri}/adapter", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return version


def adapter_dir(tracking_uri: str, model: str, version: str) -> Path:
    client = _client(tracking_uri)
    try:
        found = client.get_model_version(model, str(version))
    except MlflowException as err:
        raise RoutingError(f"registered model {model} has no version {version}") from err
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=found.source))


def served_personas(directory: Path) -> dict[str, str] | None:
    """persona -> its adapter's subdirectory, or None for one adapter shared by everyone."""
    groups = directory / "groups.json"
    return json.loads(groups.read_text()) if groups.exists() else None


# --- the routing table ------------------------------------------------------------


def _checksum(table: dict) -> str:
    body = {k: v for k, v in table.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _routing_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RoutingError(f"--routing {directory}: not a directory (a routing table lives in one)")
    return directory


def _read_revision(path: Path) -> dict:
    """A routing table file whose checksum and fields match, else a RoutingError naming it."""
    try:
        table = json.loads(read_text(path, RoutingError))
    except json.JSONDecodeError as err:
        raise RoutingError(
            f"{path} line {err.lineno} is corrupted ({err.msg}); `research routing rollback` restores the table"
        ) from None
    fields = {"revision", "routes", "fallback", "base_fingerprint"}
    if not isinstance(table, dict) or table.get("checksum") != _checksum(table) or not fields <= table.keys():
        raise RoutingError(
            f"{path} is corrupted (checksum or fields do not match); `research routing rollback` restores the table"
        )
    return table


def load_table(directory: str | Path) -> dict | None:
    """The current routing table, None if nothing was promoted yet; a corrupted one is an error."""
    path = _routing_dir(directory) / "table.json"
    return _read_revision(path) if path.exists() else None


def history(directory: str | Path) -> list[dict]:
    """Every revision, oldest first; a damaged one is an error naming its file."""
    return [_read_revision(p) for p in sorted((_routing_dir(directory) / "history").glob("*.json"))]


@contextmanager
def _locked(directory: Path):
    _routing_dir(directory).mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(directory: Path, table: dict) -> None:
    """New revision: history file first, then the table, each on disk (fsync) before it
    replaces the old one atomically, and the directory entry synced after."""
    table["checksum"] = _checksum(table)
    text = json.dumps(table, indent=1, sort_keys=True)
    for path in (directory / "history" / f"{table['revision']:06d}.json", directory / "table.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        with open(partial, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def champion_versions(table: dict | None) -> dict[str, str]:
    """model -> the `champion` alias the table implies: its newest version that any route
    or the fallback serves."""
    champions: dict[str, str] = {}
    entries = [*(table or {}).get("routes", {}).values(), (table or {}).get("fallback")]
    for entry in filter(None, entries):
        if entry["model"] not in champions or int(entry["version"]) > int(champions[entry["model"]]):
            champions[entry["model"]] = str(entry["version"])
    return champions


def _alias_drift(client, table: dict | None) -> list[tuple[str, str | None, str | None]]:
    """(model, champion alias now, champion the table implies) wherever they differ."""
    wanted = champion_versions(table)
    drift, registered_models, token = [], [], None
    while True:  # every page: one model per method, but never silently only the first 100
        page = client.search_registered_models(page_token=token)
        registered_models += page
        if not (token := page.token):
            break
    for registered in registered_models:
        now = registered.aliases.get("champion")  # a version number
        now = None if now is None else str(now)
        if now != wanted.get(registered.name):
            drift.append((registered.name, now, wanted.get(registered.name)))
    return drift


def _sync_aliases(client, table: dict | None) -> list[tuple[str, str | None, str | None]]:
    drift = _alias_drift(client, table)
    for model, _, version in drift:
        if version is None:
            client.delete_registered_model_alias(model, "champion")
        else:
            client.set_registered_model_alias(model, "champion", version)
    return drift


def verify(tracking_uri: str, routing_dir: str | Path, fix: bool = False) -> list[str]:
    """Where the registry's `champion` aliases disagree with the routing table, one line
    each (none: they agree); `fix` re-derives the aliases from the table under its lock."""
    client, directory = _client(tracking_uri), Path(routing_dir)
    with _locked(directory):
        table = load_table(directory)
        drift = _sync_aliases(client, table) if fix else _alias_drift(client, table)
    revision = table["revision"] if table else 0
    return [
        f"{model}: champion is {f'version {now}' if now else 'unset'}, routing revision {revision} implies "
        + (f"version {wanted}" if wanted else "none (it routes no version of it)")
        for model, now, wanted in drift
    ]


def _last_revision(directory: Path) -> int:
    return max((table["revision"] for table in history(directory)), default=0)


def promote(
    tracking_uri: str, routing_dir: str | Path, model: str, version: str, personas: list[str] | str, base_fp: str
) -> dict:
    """Check, then write the routing table's next revision; all or nothing."""
    directory = _routing_dir(routing_dir)
    if not personas:
        raise RoutingError("--personas: name at least one persona (p1,p2,...) or all")
    source = adapter_dir(tracking_uri, model, version)
    client = _client(tracking_uri)
    tags = client.get_model_version(model, str(version)).tags
    if tags.get("base_fingerprint") != base_fp:
        raise RoutingError(
            f"{model} version {version} was trained on base model {tags.get('base_model')!r} "
            f"({tags.get('base_fingerprint')}); the routing table serves base {base_fp}"
        )
    served = served_personas(source)
    default = read_manifest(source).get("default")
    if default is not None and not (source / default).is_dir():
        raise RoutingError(
            f"{model} version {version}: its manifest names {default!r} for unseen personas, which it lacks"
        )
    everyone = personas == "all"
    wanted = (sorted(served) if served is not None else []) if everyone else list(personas)
    if served is not None:
        if missing := [p for p in wanted if p not in served]:
            raise RoutingError(
                f"{model} version {version} has no adapter for persona {missing[0]} ({len(missing)} such)"
            )
    with _locked(directory):
        current = load_table(directory)
        if current is not None and current["base_fingerprint"] != base_fp:
            raise RoutingError(f"the routing table serves base {current['base_fingerprint']}, not {base_fp}")
        table = current or {"routes": {}, "fallback": None, "base_fingerprint": base_fp}
        table["revision"] = _last_revision(directory) + 1
        entry = {"model": model, "version": str(version)}
        if served is None and everyone:
            table["fallback"] = {**entry, "adapter": ""}
        else:
            for persona in wanted:
                table["routes"][persona] = {**entry, "adapter": served[persona] if served is not None else ""}
            if everyone and default is not None:  # the adapter's own answer for personas it never saw
                table["fallback"] = {**entry, "adapter": default}
        table["promotion"] = {
            **entry,
            "personas": "all" if everyone else list(personas),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write(directory, table)
        _sync_aliases(client, table)
        client.set_model_version_tag(
            model, str(version), f"promoted.{table['revision']}", json.dumps(table["promotion"])
        )
    return table


def rollback(tracking_uri: str, routing_dir: str | Path, to_revision: int | None = None) -> dict:
    """A new revision with the routes of `to_revision` (default: the one before the current);
    the `champion` aliases follow."""
    directory = _routing_dir(routing_dir)
    if not (directory / "history").is_dir():  # nothing to lock, nothing to restore: write nothing
        raise RoutingError(f"no routing revision to roll back to in {directory} (promote a registered model first)")
    client = _client(tracking_uri)
    with _locked(directory):
        revisions = {t["revision"]: t for t in history(directory)}
        current = _last_revision(directory)
        target = to_revision if to_revision is not None else current - 1
        if target not in revisions:
            raise RoutingError(f"no routing revision {target} to roll back to (have: {sorted(revisions) or 'none'})")
        table = {k: v for k, v in revisions[target].items() if k != "checksum"}
        table["revision"] = current + 1
        table["promotion"] = {"rollback_to": target, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        _write(directory, table)
        _sync_aliases(client, table)
    return table
