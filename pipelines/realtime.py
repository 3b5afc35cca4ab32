"""Live events into the online store: the person's sequence and activity, through Feast's
PushSources, so that the next request sees them without any retraining.

Updates are read-modify-write on the online rows: the sequence gets the new item events
appended (keeping the last N, gaps re-based on the new last event); activity counts are
incremented for every window, and the 1-day counts restart when the day changes. Longer
windows are not decremented online (their events age out at the next materialization).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import ACTIONS
from pipelines.feature_store import OnlineReader
from pipelines.features import FeatureConfig

WINDOWS = ("1d", "7d", "30d")
SEEN_CAP = FeatureConfig().seen_items_cap


@dataclass(frozen=True)
class PushResult:
    persons: int
    sequence_rows: int
    activity_rows: int


def push_events(
    store: Any,
    reader: OnlineReader,
    events: pd.DataFrame,
    sequence_length: int,
    category_of: dict[str, Any] | None = None,
    features: FeatureConfig | None = None,
) -> PushResult:
    """Push canonical, identity-resolved events (with ``person_id``) to the online store:
    sequence, activity and profile (category affinity needs ``category_of``, item → category)."""
    from feast.data_source import PushMode

    if events.empty:
        return PushResult(0, 0, 0)
    events = events.sort_values(["person_id", "ts"], kind="stable")
    sequences = _sequence_rows(reader, events, sequence_length)
    activity = _activity_rows(reader, events)
    profiles = _profile_rows(reader, events, category_of or {}, features or FeatureConfig())
    if len(sequences):
        store.push("person_sequence_push", sequences, to=PushMode.ONLINE)
    if len(activity):
        store.push("person_activity_push", activity, to=PushMode.ONLINE)
    if len(profiles):
        store.push("person_profile_push", profiles, to=PushMode.ONLINE)
    return PushResult(events["person_id"].nunique(), len(sequences), len(activity))


def _profile_rows(
    reader: OnlineReader, events: pd.DataFrame, category_of: dict[str, Any], features: FeatureConfig
) -> pd.DataFrame:
    """Profiles with the new events folded in: the old affinity decays by the time since the last
    event (the offline half-life), the new events' categories add to it; the platform mix and
    30-day total count the new events; recency moves to the newest event."""
    groups = list(events.groupby("person_id", sort=False))
    current = reader.read("person_profile", [{"person_id": p} for p, _ in groups])
    rows = []
    for (person, group), row in zip(groups, current, strict=True):
        row = row or {}
        newest = group["ts"].iloc[-1]
        last = row.get("last_event_ts")
        mass = float(row.get("events_total_30d") or 0)
        decay = 0.5 ** (max(0.0, newest.timestamp() - last) / 86400 / features.affinity_half_life_days) if last else 0.0
        affinity = {
            c: float(s) * mass * decay
            for c, s in zip(row.get("top_categories") or [], row.get("category_affinity") or [], strict=False)
        }
        for item in group["item_id"]:
            category = category_of.get(item) if item is not None else None
            if category is not None:
                affinity[category] = affinity.get(category, 0.0) + 1.0
        mix = {
            p: float(s) * mass
            for p, s in zip(row.get("platform_names") or [], row.get("platform_shares") or [], strict=False)
        }
        for platform in group["platform"]:
            mix[platform] = mix.get(platform, 0.0) + 1.0
        top = sorted(affinity.items(), key=lambda kv: (-kv[1], kv[0]))[: features.top_categories]
        total = sum(affinity.values()) or 1.0
        platforms = sorted(mix.items(), key=lambda kv: (-kv[1], kv[0]))
        mix_total = sum(mix.values()) or 1.0
        rows.append(
            {
                "person_id": person,
                "event_timestamp": newest,
                "events_total_30d": int(mass) + len(group),
                "active_platforms_30d": len(platforms),
                "platform_names": [p for p, _ in platforms],
                "platform_shares": [round(v / mix_total, 6) for _, v in platforms],
                "top_categories": [c for c, _ in top],
                "category_affinity": [round(v / total, 6) for _, v in top],
                "first_event_ts": int(row.get("first_event_ts") or group["ts"].iloc[0].timestamp()),
                "last_event_ts": int(newest.timestamp()),
            }
        )
    return pd.DataFrame(rows)


def _sequence_rows(reader: OnlineReader, events: pd.DataFrame, n: int) -> pd.DataFrame:
    with_items = events[events["item_id"].notna()]
    persons = list(pd.unique(with_items["person_id"]))
    if not persons:
        return pd.DataFrame()
    current = reader.read("person_sequence", [{"person_id": p} for p in persons])
    rows = []
    for person, row, (_, group) in zip(persons, current, with_items.groupby("person_id", sort=False), strict=True):
        last_ts = int(group["ts"].iloc[-1].timestamp())
        items, actions, platforms, gaps, seen = [], [], [], [], []
        if row is not None and row.get("seen_items"):
            seen = list(row["seen_items"])
        if row is not None and row.get("seq_items"):
            shift = last_ts - int(row["seq_last_ts"] or last_ts)
            items, actions, platforms = list(row["seq_items"]), list(row["seq_actions"]), list(row["seq_platforms"])
            gaps = [float(g) + shift for g in row["seq_gaps"]]
        seconds = group["ts"].map(lambda t: int(t.timestamp())).to_numpy()
        items += group["item_id"].tolist()
        actions += group["action"].tolist()
        platforms += group["platform"].tolist()
        gaps += (last_ts - seconds).astype(float).tolist()
        known = set(seen)
        for item in group["item_id"]:
            if item not in known:
                known.add(item)
                seen.append(item)
        rows.append(
            {
                "person_id": person,
                "event_timestamp": group["ts"].iloc[-1],
                "seq_items": items[-n:],
                "seq_actions": actions[-n:],
                "seq_platforms": platforms[-n:],
                "seq_gaps": np.asarray(gaps[-n:], dtype=np.float32).tolist(),
                "seq_last_ts": last_ts,
                "seen_items": seen[-SEEN_CAP:],
            }
        )
    return pd.DataFrame(rows)


def _activity_rows(reader: OnlineReader, events: pd.DataFrame) -> pd.DataFrame:
    groups = list(events.groupby(["person_id", "platform"], sort=False))
    keys = [{"person_id": p, "platform": pl} for (p, pl), _ in groups]
    current = reader.read("person_activity", keys)
    rows = []
    for ((person, platform), group), row in zip(groups, current, strict=True):
        counts = {f"{a}_{w}": 0 for a in ACTIONS for w in WINDOWS} | {f"events_{w}": 0 for w in WINDOWS}
        newest = group["ts"].iloc[-1]
        if row is not None:
            counts.update({k: int(row.get(k) or 0) for k in counts})
            if row["_event_ts"] is not None and row["_event_ts"].date() != newest.date():
                for k in counts:
                    if k.endswith("_1d"):
                        counts[k] = 0
        for action in group["action"]:
            for w in WINDOWS:
                counts[f"{action}_{w}"] += 1
                counts[f"events_{w}"] += 1
        rows.append({"person_id": person, "platform": platform, "event_timestamp": newest, **counts})
    return pd.DataFrame(rows)


def push_file(path: Any, workdir: Any, settings: Any) -> dict[str, int]:
    """``xinterest push``: a canonical events file into the feedback log (durable) and the online
    store. Rows that break the contract are counted and skipped (retrain quarantines them)."""
    from pipelines import feature_store as fs
    from pipelines.adapters.canonical import read as read_canonical
    from pipelines.contract import conform_events, validate_events
    from pipelines.identity import Pseudonymiser
    from pipelines.lake import Lake
    from serving.feedback import FeedbackLog

    source = read_canonical(path)
    frame = pd.concat([b.events for b in source.batches], ignore_index=True)
    events = conform_events(frame)
    _, reason = validate_events(events, pd.Timestamp.now(tz="UTC"))
    valid = events[reason.isna().to_numpy()].copy()
    FeedbackLog(workdir.feedback).append(valid.drop(columns=["person_id"]).to_dict("records"))
    store = fs.open_store(workdir, settings)
    reader = OnlineReader(store, ["person_sequence", "person_activity", "person_profile", "user_identity"])
    pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
    persons = {}
    for platform, user in valid[["platform", "user_id"]].drop_duplicates().itertuples(index=False):
        key = pseudo.user(platform, user)
        row = reader.read_one("user_identity", {"user_id": key})
        persons[(platform, user)] = row["person_id"] if row else pseudo.person(key)
    valid["person_id"] = [persons[(p, u)] for p, u in zip(valid["platform"], valid["user_id"], strict=True)]
    items = Lake(workdir.lake).table("items")
    category_of = (
        {i: c for i, c in zip(items["item_id"], items["category"], strict=True) if isinstance(c, str) and c}
        if items is not None
        else {}
    )  # items without a category add nothing to the affinity (as in the service)
    result = push_events(store, reader, valid, settings.sequence_length, category_of)
    return {"read": len(events), "pushed": len(valid), "invalid": int(reason.notna().sum()), "persons": result.persons}
