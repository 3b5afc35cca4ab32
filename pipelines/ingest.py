"""Ingest: raw sources in; a validated, deduplicated, identity-resolved, pseudonymised lake out.

For every run, ``read = accepted + quarantined + duplicates`` holds, for the whole run and for
each source: each raw row lands in exactly one of the three. Rows are checked in this order:
contract rules (quarantine with the first broken rule), duplicates within the run, bots
(quarantine), duplicates of events already in the lake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.adapters import SourceData, read_source
from pipelines.config import Settings, Workdir
from pipelines.contract import (
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    ValidationRules,
    bot_mask,
    conform_events,
    content_event_ids,
    utc_dates,
    validate_events,
)
from pipelines.identity import Pseudonymiser, resolve_persons
from pipelines.lake import Lake
from pipelines.synthetic import SyntheticConfig, generate

log = logging.getLogger(__name__)

EXTERNAL_PERSON = "_person"  # pseudo-platform for person ids a canonical source already carries
QUARANTINE_COLUMNS = ["source", "file", "reason", *EVENT_COLUMNS, "raw"]


@dataclass
class Counts:
    """Where the rows of one source (or table) went."""

    source: str
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def balanced(self) -> bool:
        return self.read == self.accepted + self.quarantined_total + self.duplicates

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": dict(sorted(self.quarantined.items())),
            "quarantined_total": self.quarantined_total,
            "duplicates": self.duplicates,
        }


@dataclass
class IngestReport:
    run_id: str
    lake: str
    read: int
    accepted: int
    quarantined: dict[str, int]
    quarantined_total: int
    duplicates: int
    duplicates_of_lake: int
    sources: list[dict[str, object]]
    items: dict[str, object]
    links: dict[str, object]
    persons: int
    lake_events: int
    lake_changed: bool
    quarantine_file: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))


class IngestError(RuntimeError):
    pass


def ingest_sources(
    specs: Iterable[tuple[str, Path | None]],
    workdir: Workdir,
    settings: Settings,
    report_path: Path | None = None,
    progress: bool = False,
    now: pd.Timestamp | None = None,
    lake_dir: Path | None = None,
) -> IngestReport:
    """Open each ``(adapter, path)`` and ingest them together into ``workdir``'s lake.

    A ``synthetic`` source without a path is generated (default size) under ``workdir/raw``.
    """
    sources = []
    for name, path in specs:
        if name == "synthetic" and path is None:
            path = ensure_synthetic(workdir.raw / "synthetic", seed=settings.seed, progress=progress)
        sources.append(read_source(name, path, settings.data_dir))
    return ingest(sources, workdir, settings, report_path=report_path, progress=progress, now=now, lake_dir=lake_dir)


def ensure_synthetic(folder: Path, seed: int = 0, progress: bool = False, n_events: int | None = None) -> Path:
    """The default synthetic raw logs in ``folder``, generated once."""
    if not (folder / "truth" / "expected_report.json").exists():
        config = SyntheticConfig(seed=seed) if n_events is None else SyntheticConfig(seed=seed, n_events=n_events)
        generate(folder, config, progress=progress)
    return folder


def ingest(
    sources: list[SourceData],
    workdir: Workdir,
    settings: Settings,
    report_path: Path | None = None,
    progress: bool = False,
    now: pd.Timestamp | None = None,
    rules: ValidationRules | None = None,
    lake_dir: Path | None = None,
) -> IngestReport:
    """Ingest already-opened sources into ``lake_dir`` (default ``workdir/lake``); quarantined
    rows go to ``workdir/quarantine`` and every report to ``workdir/reports``. See the module
    docstring for the order of checks."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    rules = rules or ValidationRules()
    if settings.using_demo_key:
        log.warning("pseudonymising with the local demo key: set XINTEREST_PSEUDONYM_KEY in production")
    pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
    lake = Lake(lake_dir or workdir.lake)
    counts: dict[str, Counts] = {}
    valid_parts: list[pd.DataFrame] = []
    quarantine_parts: list[pd.DataFrame] = []
    seen = pd.Index([], dtype=object)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("ingest: reading sources", total=None)
        for source in sources:
            for batch in source.batches:
                bar.update(task, description=f"ingest: {batch.source} ({batch.path.name})")
                c = counts.setdefault(batch.source, Counts(batch.source))
                valid, quarantined, n_dup, seen = _check_batch(
                    batch.events, batch.source, batch.path, pseudo, now, rules, seen
                )
                c.read += len(batch.events)
                c.duplicates += n_dup
                c.quarantined.update(quarantined["reason"].value_counts().to_dict())
                valid_parts.append(valid)
                quarantine_parts.append(quarantined)
                bar.advance(task)
        bar.update(task, description="ingest: bots, identity, lake commit")
        valid = pd.concat(valid_parts, ignore_index=True) if valid_parts else _empty_valid()
        bots = bot_mask(valid, rules).to_numpy()
        if bots.any():
            flagged = valid[bots]
            quarantine_parts.append(_quarantine_frame(flagged, pd.Series("bot_suspected", index=flagged.index)))
            for source, n in flagged["_source"].value_counts().items():
                counts[source].quarantined["bot_suspected"] += int(n)
            valid = valid[~bots]

        dates = utc_dates(valid["ts"])
        touched = sorted(dates.unique())
        in_lake = lake.events(columns=["event_id"], dates=touched)["event_id"]
        dup_lake = valid["event_id"].isin(pd.Index(in_lake)).to_numpy()
        for source, n in valid.loc[dup_lake, "_source"].value_counts().items():
            counts[source].duplicates += int(n)
        new = valid[~dup_lake].copy()
        new_dates = dates[~dup_lake]
        for source, n in new["_source"].value_counts().items():
            counts[source].accepted += int(n)

        links_counts, links = _links(sources, new, pseudo, lake)
        persons = resolve_persons(_nodes(new, lake), links, pseudo)
        items_counts, items = _items(sources, lake)
        partitions = _partitions(lake, new, new_dates, persons)
        changed = lake.commit(
            partitions=partitions,
            tables={"persons": persons, "links": links, "items": items},
        )
    quarantine_file = _write_quarantine(workdir, quarantine_parts)
    report = _report(counts, lake, links_counts, items_counts, persons, changed, quarantine_file, int(dup_lake.sum()))
    if report_path is not None:
        report.write(report_path)
    workdir.reports.mkdir(parents=True, exist_ok=True)
    report.write(workdir.reports / f"ingest-{report.run_id}.json")
    return report


def _empty_valid() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    frame["value"] = pd.Series(dtype=float)
    frame["_source"] = pd.Series(dtype=object)
    return frame


def _check_batch(
    raw: pd.DataFrame,
    source: str,
    path: Path,
    pseudo: Pseudonymiser,
    now: pd.Timestamp,
    rules: ValidationRules,
    seen: pd.Index,
) -> tuple[pd.DataFrame, pd.DataFrame, int, pd.Index]:
    """Validate one batch; return valid rows, quarantined rows, the in-run duplicate count."""
    events = conform_events(raw)
    for extra in ("_malformed", "_value_invalid"):
        if extra in raw:
            events[extra] = raw[extra].eq(True).to_numpy()
    given_person = events["person_id"].copy()
    has_user = events["platform"].notna() & events["user_id"].notna()
    if has_user.any():
        events.loc[has_user, "user_id"] = pseudo.users(
            events.loc[has_user, "platform"], events.loc[has_user, "user_id"]
        )
    if given_person.notna().any():
        events["person_id"] = pseudo.users(pd.Series(EXTERNAL_PERSON, index=events.index), given_person).where(
            given_person.notna(), None
        )
    _, reason = validate_events(events, now, rules)
    bad = reason.notna().to_numpy()
    quarantined = _quarantine_frame(events[bad], reason[bad], raw.get("_raw"), source, path)
    valid = events.loc[~bad, EVENT_COLUMNS].copy()
    missing_id = valid["event_id"].isna().to_numpy()
    if missing_id.any():
        valid.loc[missing_id, "event_id"] = content_event_ids(valid[missing_id])
    dup = valid["event_id"].duplicated().to_numpy() | valid["event_id"].isin(seen).to_numpy()
    valid = valid[~dup]
    valid["_source"] = source
    valid["ts"] = valid["ts"].astype("datetime64[us, UTC]")
    return valid, quarantined, int(dup.sum()), seen.append(pd.Index(valid["event_id"]))


def _quarantine_frame(
    rows: pd.DataFrame,
    reason: pd.Series,
    raw: pd.Series | None = None,
    source: str | None = None,
    path: Path | None = None,
) -> pd.DataFrame:
    out = rows.reindex(columns=EVENT_COLUMNS).copy()
    out["ts"] = out["ts"].astype("datetime64[us, UTC]")
    out.insert(0, "reason", reason.to_numpy())
    out.insert(0, "file", str(path) if path else None)
    out.insert(0, "source", rows["_source"].to_numpy() if "_source" in rows and source is None else source)
    out["raw"] = raw.reindex(rows.index).to_numpy() if raw is not None else None
    return out


def _nodes(new: pd.DataFrame, lake: Lake) -> pd.DataFrame:
    nodes = new[["platform", "user_id"]].drop_duplicates()
    old = lake.table("persons")
    if old is not None:
        nodes = pd.concat([old[["platform", "user_id"]], nodes]).drop_duplicates()
    return nodes


def _links(
    sources: list[SourceData], new: pd.DataFrame, pseudo: Pseudonymiser, lake: Lake
) -> tuple[Counts, pd.DataFrame]:
    """Pseudonymised identity links: the lake's, the sources', and those implied by given person ids."""
    counts = Counts("links")
    frames = []
    for source in sources:
        links = source.links.reindex(columns=LINK_COLUMNS).astype(object)
        links = links.apply(lambda s: s.str.strip() if s.dtype == object else s).replace("", None)
        counts.read += len(links)
        complete = links.notna().all(axis=1)
        counts.quarantined["incomplete_link"] += int((~complete).sum())
        links = links[complete]
        if len(links):
            links = links.assign(
                user_id_a=pseudo.users(links["platform_a"], links["user_id_a"]).to_numpy(),
                user_id_b=pseudo.users(links["platform_b"], links["user_id_b"]).to_numpy(),
            )
        frames.append(links)
    given = new[new["person_id"].notna()]
    if len(given):
        frames.append(
            pd.DataFrame(
                {
                    "platform_a": given["platform"].to_numpy(),
                    "user_id_a": given["user_id"].to_numpy(),
                    "platform_b": EXTERNAL_PERSON,
                    "user_id_b": given["person_id"].to_numpy(),
                }
            ).drop_duplicates()
        )
    incoming = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LINK_COLUMNS)
    old = lake.table("links")
    old = old if old is not None else pd.DataFrame(columns=LINK_COLUMNS)
    n_sourced = counts.read - counts.quarantined_total
    merged = pd.concat([old, incoming], ignore_index=True)
    deduped = merged.drop_duplicates().sort_values(LINK_COLUMNS).reset_index(drop=True)
    new_links = len(deduped) - len(old)
    sourced_new = max(0, min(n_sourced, new_links))
    counts.accepted = sourced_new
    counts.duplicates = n_sourced - sourced_new
    return counts, deduped


def _items(sources: list[SourceData], lake: Lake) -> tuple[Counts, pd.DataFrame]:
    """Upsert the sources' items into the lake's items table (last one wins per platform+id)."""
    counts = Counts("items")
    frames = []
    for source in sources:
        items = source.items.reindex(columns=ITEM_COLUMNS).astype(object)
        items = items.apply(lambda s: s.str.strip() if s.dtype == object else s).replace("", None)
        counts.read += len(items)
        complete = items["item_id"].notna() & items["platform"].notna()
        counts.quarantined["missing_item_id_or_platform"] += int((~complete).sum())
        frames.append(items[complete])
    incoming = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ITEM_COLUMNS)
    unique_incoming = incoming.drop_duplicates(["platform", "item_id"], keep="last")
    old = lake.table("items")
    old = old if old is not None else pd.DataFrame(columns=ITEM_COLUMNS)
    old_keyed = old.set_index(["platform", "item_id"])
    new_keyed = unique_incoming.set_index(["platform", "item_id"])
    common = new_keyed.index.intersection(old_keyed.index)
    same = (new_keyed.loc[common].fillna("") == old_keyed.loc[common, new_keyed.columns].fillna("")).all(axis=1)
    unchanged = int(same.sum())
    counts.duplicates = (len(incoming) - len(unique_incoming)) + unchanged
    counts.accepted = len(unique_incoming) - unchanged
    merged = pd.concat([old, unique_incoming], ignore_index=True).drop_duplicates(["platform", "item_id"], keep="last")
    return counts, merged.sort_values(["platform", "item_id"]).reset_index(drop=True)[ITEM_COLUMNS]


def _partitions(lake: Lake, new: pd.DataFrame, new_dates: pd.Series, persons: pd.DataFrame) -> dict[str, pa.Table]:
    """The partitions to (re)write: the touched dates, or every date when identities merged."""
    person_of = pd.Series(
        persons["person_id"].to_numpy(), index=pd.MultiIndex.from_frame(persons[["platform", "user_id"]])
    )
    new = new.drop(columns="_source")
    new["person_id"] = person_of.reindex(pd.MultiIndex.from_frame(new[["platform", "user_id"]])).to_numpy()
    old_persons = lake.table("persons")
    remap = False
    if old_persons is not None and len(old_persons):
        key = pd.MultiIndex.from_frame(old_persons[["platform", "user_id"]])
        remap = bool((person_of.reindex(key).to_numpy() != old_persons["person_id"].to_numpy()).any())
    # One conversion to Arrow, then zero-copy slices per date.
    order = np.argsort(new_dates.to_numpy(), kind="stable")
    new = new.iloc[order]
    sorted_dates = new_dates.to_numpy()[order]
    table = pa.Table.from_pandas(new[EVENT_COLUMNS], schema=EVENTS_SCHEMA, preserve_index=False)
    dates, starts = np.unique(sorted_dates, return_index=True)
    bounds = [*starts.tolist(), len(sorted_dates)]
    fresh = {str(d): table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i, d in enumerate(dates)}
    touched = set(lake.dates()) if remap else set()
    touched |= {d for d in fresh if d in set(lake.dates())}
    old = lake.events(dates=sorted(touched)) if touched else None
    out = dict(fresh)
    if old is not None and len(old):
        if remap:
            old["person_id"] = person_of.reindex(pd.MultiIndex.from_frame(old[["platform", "user_id"]])).to_numpy()
        old_dates = utc_dates(old["ts"])
        for date, frame in old.groupby(old_dates.to_numpy(), sort=False):
            part = pa.Table.from_pandas(frame[EVENT_COLUMNS], schema=EVENTS_SCHEMA, preserve_index=False)
            out[date] = pa.concat_tables([part, fresh[date]]) if date in fresh else part
    return out


def _write_quarantine(workdir: Workdir, parts: list[pd.DataFrame]) -> str | None:
    """Quarantined rows (user ids pseudonymised; raw text only for unparseable rows)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True)[QUARANTINE_COLUMNS]
    frame["value"] = frame["value"].astype(float)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    folder = workdir.quarantine
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"quarantine-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def _report(
    counts: dict[str, Counts],
    lake: Lake,
    links: Counts,
    items: Counts,
    persons: pd.DataFrame,
    changed: bool,
    quarantine_file: str | None,
    dup_lake: int,
) -> IngestReport:
    total = Counts("total")
    for c in counts.values():
        if not c.balanced():
            raise IngestError(f"row accounting broken for {c.source}: {c.to_dict()}")
        total.read += c.read
        total.accepted += c.accepted
        total.duplicates += c.duplicates
        total.quarantined.update(c.quarantined)
    return IngestReport(
        run_id=uuid.uuid4().hex[:12],
        lake=str(lake.root),
        read=total.read,
        accepted=total.accepted,
        quarantined=dict(sorted(total.quarantined.items())),
        quarantined_total=total.quarantined_total,
        duplicates=total.duplicates,
        duplicates_of_lake=dup_lake,
        sources=[c.to_dict() for c in counts.values()],
        items=items.to_dict(),
        links=links.to_dict(),
        persons=int(persons.loc[persons["platform"] != EXTERNAL_PERSON, "person_id"].nunique()) if len(persons) else 0,
        lake_events=lake.n_events(),
        lake_changed=changed,
        quarantine_file=quarantine_file,
    )


__all__ = ["Counts", "IngestError", "IngestReport", "ingest", "ingest_sources"]
