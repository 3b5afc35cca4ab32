"""Right to be forgotten: delete a person everywhere, with one command.

Removed: the person's events and identity rows from the lake (one atomic commit), their rows
from every offline feature table, their keys from the online store (SQLite or Redis), their
lines from the feedback log and their rows from the quarantine. Models are not retrained here;
the next training no longer sees the person.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.identity import Pseudonymiser
from pipelines.lake import Lake

log = logging.getLogger(__name__)


@dataclass
class ForgetReport:
    person_id: str
    accounts: int = 0
    lake_events: int = 0
    feature_rows: dict[str, int] = field(default_factory=dict)
    online_keys: int = 0
    feedback_lines: int = 0
    quarantine_rows: int = 0


def forget(workdir: Workdir, settings: Settings, person_id: str) -> ForgetReport:
    report = ForgetReport(person_id)
    lake = Lake(workdir.lake)
    persons = lake.table("persons")
    accounts = persons[persons["person_id"] == person_id] if persons is not None else pd.DataFrame()
    report.accounts = int((accounts["platform"] != "_person").sum()) if len(accounts) else 0
    users = set(accounts["user_id"]) if len(accounts) else set()

    # Lake: rewrite the partitions holding the person's events, drop identity rows.
    mine = lake.events(columns=["person_id", "ts"])
    dates = sorted(set(pd.to_datetime(mine.loc[mine["person_id"] == person_id, "ts"]).dt.strftime("%Y-%m-%d")))
    partitions = {}
    for date in dates:
        table = lake.events_table(dates=[date])
        keep = pc.not_equal(table["person_id"], person_id)
        report.lake_events += table.num_rows - int(pc.sum(keep).as_py() or 0)
        partitions[date] = table.filter(keep)
    tables = {}
    if persons is not None:
        tables["persons"] = persons[persons["person_id"] != person_id].reset_index(drop=True)
    links = lake.table("links")
    if links is not None:
        tables["links"] = links[~(links["user_id_a"].isin(users) | links["user_id_b"].isin(users))].reset_index(
            drop=True
        )
    lake.commit(partitions=partitions, tables=tables)

    # Offline feature tables.
    for path in sorted(workdir.feature_data.glob("*.parquet")):
        table = pq.read_table(path)
        if "person_id" not in table.column_names:
            continue
        keep = pc.not_equal(table["person_id"], person_id)
        removed = table.num_rows - int(pc.sum(keep).as_py() or 0)
        if removed:
            fs.write_tables({path.stem: table.filter(keep)}, workdir.feature_data)
            report.feature_rows[path.stem] = removed

    # Online store.
    if (workdir.feature_repo / "feature_store.yaml").exists():
        # every platform any account is on: activity rows are keyed by (person, platform)
        platforms = set(persons["platform"]) - {"_person"} if persons is not None else set()
        report.online_keys = _delete_online(fs.open_store(workdir, settings), person_id, platforms, users)

    # Feedback log (raw ids: matched through their pseudonyms) and quarantine.
    pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
    for path in sorted(workdir.feedback.glob("*.jsonl")) if workdir.feedback.exists() else []:
        lines = path.read_text().splitlines()
        kept = [line for line in lines if not _is_theirs(line, users, pseudo)]
        if len(kept) != len(lines):
            report.feedback_lines += len(lines) - len(kept)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
    for path in sorted(workdir.quarantine.glob("*.parquet")) if workdir.quarantine.exists() else []:
        frame = pd.read_parquet(path)
        theirs = frame["user_id"].isin(users) | frame["person_id"].eq(person_id)
        if theirs.any():
            report.quarantine_rows += int(theirs.sum())
            frame[~theirs].to_parquet(path, index=False)
    return report


def _is_theirs(line: str, users: set[str], pseudo: Pseudonymiser) -> bool:
    import json

    try:
        record = json.loads(line)
        return pseudo.user(str(record["platform"]), str(record["user_id"])) in users
    except (ValueError, KeyError, TypeError):
        return False


def _delete_online(store: Any, person_id: str, platforms: set[str], users: set[str]) -> int:
    """Delete the person's entity keys from every view of the online store (Feast's own key
    encoding and tables: SQLite rows or Redis hashes)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    config = store.config
    version = config.entity_key_serialization_version
    keys: list[tuple[str, bytes]] = []
    for fv in store.list_feature_views():
        join = list(fv.join_keys)
        rows: list[dict[str, str]] = []
        if join == ["person_id"]:
            rows = [{"person_id": person_id}]
        elif join == ["person_id", "platform"]:
            rows = [{"person_id": person_id, "platform": p} for p in platforms]
        elif join == ["user_id"]:
            rows = [{"user_id": u} for u in users]
        for row in rows:
            key = EntityKey(join_keys=join, entity_values=[Value(string_val=row[j]) for j in join])
            keys.append((fv.name, serialize_entity_key(key, entity_key_serialization_version=version)))
    if config.online_store.type == "sqlite":
        import sqlite3

        conn = sqlite3.connect(str(Path(config.repo_path) / config.online_store.path))
        deleted = 0
        with conn:
            for view, key in keys:
                try:
                    deleted += conn.execute(
                        f'DELETE FROM "{config.project}_{view}" WHERE entity_key = ?', (key,)
                    ).rowcount
                except sqlite3.OperationalError as e:  # a view never materialized has no table
                    if "no such table" not in str(e):
                        raise  # e.g. "database is locked": forgetting must not report success
                    continue
        conn.close()
        return deleted
    client = store._get_provider().online_store._get_client(config.online_store)
    return int(sum(client.delete(key + config.project.encode()) for _, key in keys))
