"""The Feast feature store of a work directory: repo, apply, materialize, retrieval, push.

Each work directory has a standard Feast repository, ``WORKDIR/feature_repo``: its
``feature_store.yaml`` (rendered from the chosen profile), a ``definitions.py`` that imports
the project's definitions (``feature_repo/definitions.py``), and ``data/`` with the offline
tables. ``cd WORKDIR/feature_repo`` and the Feast CLI works there as anywhere.

Online reads for serving go through :class:`OnlineReader`: the same online store and the same
FeatureService as ``FeatureStore.get_online_features``, without its per-call planning.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipelines.config import REPO_ROOT, Settings, Workdir
from pipelines.features import TABLES, FeatureConfig, compute_features, write_tables
from pipelines.lake import Lake

log = logging.getLogger(__name__)

SOURCE_REPO = REPO_ROOT / "feature_repo"
SHIM = '''"""This work directory's Feast definitions: the project's, imported (see feature_repo/definitions.py)."""

from feature_repo.definitions import *  # noqa: F403
'''
VAE_SERVICE = "vae_v1"
RANKER_SERVICE = "ranker_v1"
PERSON_VIEWS = ("person_sequence", "person_profile", "person_embedding")


class FeatureStoreError(RuntimeError):
    pass


def render_profile(settings: Settings) -> str:
    """``feature_store.yaml`` for the settings' profile, with concrete values."""
    name = "feature_store.yaml" if settings.profile == "local" else "feature_store.prod.yaml"
    text = (SOURCE_REPO / name).read_text()
    text = text.replace("${XINTEREST_POSTGRES_URL}", settings.postgres_url).replace("${REDIS_URL}", settings.redis_url)
    return text.replace("project: xinterest", f"project: {settings.feast_project}", 1)


def prepare_repo(workdir: Workdir, settings: Settings) -> Path:
    """Create or refresh ``WORKDIR/feature_repo`` for the settings' profile."""
    repo = workdir.feature_repo
    (repo / "data").mkdir(parents=True, exist_ok=True)
    for name, text in (("feature_store.yaml", render_profile(settings)), ("definitions.py", SHIM)):
        path = repo / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return repo


def open_store(workdir: Workdir, settings: Settings) -> Any:
    """A ``feast.FeatureStore`` on the work directory's repo."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(prepare_repo(workdir, settings)))


def definitions() -> list[Any]:
    """Every Feast object the project defines, as ``feast apply`` would collect them."""
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource

    import feature_repo.definitions as d

    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    seen: list[Any] = []
    for value in vars(d).values():
        if isinstance(value, kinds) and not any(value is s for s in seen):
            seen.append(value)
    return seen


def apply(store: Any) -> None:
    """Register the definitions (idempotent, like ``feast apply``)."""
    store.apply(definitions())


def build_offline_tables(
    workdir: Workdir,
    settings: Settings,
    events: pd.DataFrame | None = None,
    config: FeatureConfig | None = None,
    items: pd.DataFrame | None = None,
    persons: pd.DataFrame | None = None,
) -> dict[str, int]:
    """Compute the offline feature tables from the lake (or from ``events``, with their
    ``items`` and ``persons`` tables) into the repo's data/."""
    if events is None or items is None or persons is None:
        lake = Lake(workdir.lake)  # what the caller did not give comes from the work directory's lake
        events = lake.events() if events is None else events
        items = lake.table("items") if items is None else items
        persons = lake.table("persons") if persons is None else persons
    if events.empty:
        raise FeatureStoreError(f"the lake at {workdir.lake} has no events: run `xinterest ingest` first")
    config = config or FeatureConfig(sequence_length=settings.sequence_length)
    tables = compute_features(events, items, persons, config)
    prepare_repo(workdir, settings)
    if not (workdir.feature_data / "person_embedding.parquet").exists():
        # Until a model writes embeddings, the view exists with no rows (its FeatureService resolves).
        write_embeddings(workdir, [], [], "", datetime(2000, 1, 1, tzinfo=UTC))
    return write_tables(tables, workdir.feature_data)


def time_range(workdir: Workdir) -> tuple[datetime, datetime]:
    """Earliest and latest ``event_timestamp`` over the offline tables present."""
    lows, highs = [], []
    for name in (*TABLES, "person_embedding"):
        path = workdir.feature_data / f"{name}.parquet"
        if path.exists():
            column = pq.read_table(path, columns=["event_timestamp"]).column(0)
            if len(column):
                lows.append(column.to_pandas().min())
                highs.append(column.to_pandas().max())
    if not lows:
        raise FeatureStoreError(f"no offline feature tables in {workdir.feature_data}")
    return min(lows).to_pydatetime(), max(highs).to_pydatetime()


def in_repo(store: Any) -> contextlib.chdir:
    """Run offline-store work inside the Feast repo folder.

    The DuckDB offline store reads a FileSource's relative path against the process's working
    directory (the Dask/file store used the repo path); the Feast CLI runs in the repo folder,
    so our own calls do the same. Not for concurrent threads: the working directory is global.
    """
    return contextlib.chdir(store.repo_path)


def materialize(store: Any, workdir: Workdir, views: Sequence[str] | None = None) -> float:
    """Load the latest offline values into the online store over the tables' whole time range.

    (``feast materialize-incremental`` starts at ``now - ttl`` the first time, which would skip
    history older than the TTL, such as sources without time; the full range avoids that.)
    Returns the seconds it took.
    """
    start, end = time_range(workdir)
    present = [name for name in (*TABLES, "person_embedding") if (workdir.feature_data / f"{name}.parquet").exists()]
    wanted = [v for v in (views or present) if v in present]
    started = time.perf_counter()
    with in_repo(store):
        store.materialize(start - timedelta(seconds=1), end + timedelta(seconds=1), feature_views=wanted)
    return time.perf_counter() - started


def refresh(
    workdir: Workdir,
    settings: Settings,
    events: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    persons: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Lake (or the given tables) → offline tables → ``feast apply`` → materialize; returns rows
    and timings."""
    started = time.perf_counter()
    rows = build_offline_tables(workdir, settings, events, items=items, persons=persons)
    built = time.perf_counter()
    store = open_store(workdir, settings)
    apply(store)
    seconds = materialize(store, workdir)
    return {
        "rows": rows,
        "build_seconds": round(built - started, 3),
        "materialize_seconds": round(seconds, 3),
        "materialized_rows_per_second": round(sum(rows.values()) / max(seconds, 1e-9)),
    }


def historical_features(
    store: Any, entity_df: pd.DataFrame, service: str, day_grain: Sequence[str] = ()
) -> pd.DataFrame:
    """Point-in-time correct training frame: for each entity row, the feature values known at
    its ``event_timestamp``, for every feature of the FeatureService; one output row per input
    row, in input order.

    Each view is retrieved on the de-duplicated keys it needs and joined back: person features
    once per person and time, not once per candidate item. It also keeps the result one row
    per input row whatever the offline store does with duplicate keys (the Dask/File store
    collapses rows sharing a join key and timestamp, feast-dev/feast#6787, and drops a row
    whose key has only later feature rows).
    """
    if "event_timestamp" not in entity_df:
        raise FeatureStoreError("the entity frame needs an event_timestamp column (the label time)")
    out = entity_df.reset_index(drop=True).copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    for projection in store.get_feature_service(service).feature_view_projections:
        name = projection.name_to_use()
        keys = _retrieval_keys(store, name)
        missing = [k for k in keys if k not in out]
        if missing:
            raise FeatureStoreError(f"{service} needs columns {missing} in the entity frame (for {name})")
        columns = [f.name for f in projection.features]
        at = out["event_timestamp"].dt.floor("D") if name in day_grain else out["event_timestamp"]
        lookup = out[keys].assign(event_timestamp=at)
        unique = lookup.drop_duplicates().reset_index(drop=True)
        with in_repo(store):
            got = store.get_historical_features(entity_df=unique, features=[f"{name}:{c}" for c in columns]).to_df()
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
        got = lookup.merge(got[[*keys, "event_timestamp", *columns]], on=[*keys, "event_timestamp"], how="left")
        out[columns] = got[columns].to_numpy()
    return out


def _retrieval_keys(store: Any, name: str) -> list[str]:
    """Entity columns (and request fields) a view or on-demand view needs."""
    from feast.errors import FeatureViewNotFoundException

    try:
        return list(store.get_feature_view(name).join_keys)
    except FeatureViewNotFoundException:
        odfv = store.get_on_demand_feature_view(name)
    keys: list[str] = []
    for source in odfv.source_feature_view_projections.values():
        keys += [k for k in store.get_feature_view(source.name).join_keys if k not in keys]
    for request in odfv.source_request_sources.values():
        keys += [f.name for f in request.schema if f.name not in keys]
    return keys


def write_embeddings(
    workdir: Workdir, person_ids: Sequence[str], embeddings: Any, model_version: str, as_of: datetime
) -> int:
    """Write the VAE's interest embeddings as the ``person_embedding`` offline table."""
    import numpy as np
    import pyarrow as pa

    values = np.asarray(embeddings, dtype=np.float32)
    table = pa.table(
        {
            "person_id": pa.array(list(person_ids), pa.string()),
            "event_timestamp": pa.array([as_of] * len(person_ids), pa.timestamp("us", tz="UTC")),
            "interest_embedding": pa.array([row.tolist() for row in values], pa.list_(pa.float32())),
            "embedding_model_version": pa.array([model_version] * len(person_ids), pa.string()),
        }
    )
    return write_tables({"person_embedding": table}, workdir.feature_data)["person_embedding"]


@dataclass(frozen=True)
class _ViewRead:
    view: Any
    features: list[str]
    join_keys: list[str]


class OnlineReader:
    """Fast online reads of whole feature views for given entity keys.

    It reads the store's own online tables (SQLite or Redis) in Feast's storage format, through
    Feast's provider, and decodes the protobuf values directly. On Redis, all the views of one
    request go in a single pipeline (one round trip). Same data as ``get_online_features``,
    without re-planning the request on every call.
    """

    def __init__(self, store: Any, views: Iterable[str] | None = None) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._EntityKey, self._Value, self._serialize = EntityKey, Value, serialize_entity_key
        self.store = store
        self.config = store.config
        self.provider = store._get_provider()
        self._redis = self.config.online_store.type == "redis"
        self._sqlite = self.config.online_store.type == "sqlite"
        self._local = threading.local()  # one SQLite connection per thread
        names = list(views) if views is not None else [fv.name for fv in store.list_feature_views()]
        self._odfvs: dict[str, Any] = {}
        self.views: dict[str, _ViewRead] = {}
        self._hset: dict[str, tuple[list[str], list[Any]]] = {}
        for name in names:
            self._add(name)

    def _add(self, name: str) -> _ViewRead:
        fv = self.store.get_feature_view(name)
        self.views[name] = _ViewRead(fv, [f.name for f in fv.features], list(fv.join_keys))
        if self._redis:
            self._hset[name] = self.provider.online_store._generate_hset_keys_for_features(fv, None, name)
        return self.views[name]

    def _entity_keys(self, view: str, keys: Sequence[dict[str, str]]) -> list[Any]:
        join = (self.views.get(view) or self._add(view)).join_keys
        return [
            self._EntityKey(join_keys=join, entity_values=[self._Value(string_val=k[j]) for j in join]) for k in keys
        ]

    def read(
        self, view: str, keys: Sequence[dict[str, str]], now: datetime | None = None
    ) -> list[dict[str, Any] | None]:
        """Feature values per key (``None`` where the store has no row, or, when ``now`` is
        given, where the row is older than the view's TTL); each row gets ``_event_ts``."""
        return self.read_batch([(view, keys)], now)[0]

    def read_batch(
        self, requests: Sequence[tuple[str, Sequence[dict[str, str]]]], now: datetime | None = None
    ) -> list[list[dict[str, Any] | None]]:
        """Several :meth:`read` calls at once (one Redis round trip for all of them)."""
        for view, _ in requests:
            if view not in self.views:
                self._add(view)
        if self._redis:
            raw = self._redis_read(requests)
        elif self._sqlite:
            raw = [self._sqlite_read(v, keys) for v, keys in requests]
        else:
            raw = [
                self.provider.online_read(
                    self.config, self.views[v].view, self._entity_keys(v, keys), self.views[v].features
                )
                for v, keys in requests
            ]
        out = []
        for (view, _), rows in zip(requests, raw, strict=True):
            ttl = self.views[view].view.ttl
            decoded: list[dict[str, Any] | None] = []
            for ts, values in rows:
                if not values or (now is not None and ttl and ts is not None and now - ts > ttl):
                    decoded.append(None)
                else:
                    decoded.append(_decode(values, ts))
            out.append(decoded)
        return out

    def _sqlite_read(
        self, view: str, keys: Sequence[dict[str, str]]
    ) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        """The rows of ``keys`` from Feast's SQLite table of ``view``: one SELECT, values parsed
        from Feast's protobufs (the table and key encoding are Feast's own)."""
        import sqlite3

        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id

        conn = getattr(self._local, "conn", None)
        if conn is None:
            path = SqliteOnlineStore._get_db_path(self.config)
            # No detect_types: sqlite3 would convert the timestamp of every (entity, feature)
            # row; one per entity is converted below, as Feast's converter does.
            conn = self._local.conn = sqlite3.connect(path, check_same_thread=False)
        spec = self.views[view]
        table = _table_id(self.config.project, spec.view, self.config.registry.enable_online_feature_view_versioning)
        version = self.config.entity_key_serialization_version
        serialized = [
            self._serialize(k, entity_key_serialization_version=version) for k in self._entity_keys(view, keys)
        ]
        try:
            rows = conn.execute(
                f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" WHERE entity_key IN '
                f"({','.join('?' * len(serialized))})",
                serialized,
            ).fetchall()
        except sqlite3.OperationalError as e:  # the view was never materialized
            if "no such table" not in str(e):
                raise  # a locked or broken store is an error, not an unknown person
            return [(None, None) for _ in serialized]
        found: dict[bytes, tuple[datetime | None, dict[str, Any]]] = {}
        for key, name, value, ts in rows:
            proto = self._Value()
            proto.ParseFromString(value)
            entry = found.get(key)
            if entry is None:  # one timestamp per entity row: parse it once (Feast stores UTC, naive)
                stamp = _stored_time(ts)
                entry = found[key] = (
                    stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp,
                    {},
                )
            entry[1][name] = proto
        return [found.get(k, (None, None)) for k in serialized]

    def _redis_read(self, requests: Sequence[tuple[str, Sequence[dict[str, str]]]]) -> list[list[Any]]:
        online = self.provider.online_store
        client = online._get_client(self.config.online_store)
        plan = []
        with client.pipeline(transaction=False) as pipe:
            for view, keys in requests:
                features, hset_keys = self._hset[view]
                redis_keys = online._generate_redis_keys_for_entities(self.config, self._entity_keys(view, keys))
                for key in redis_keys:
                    pipe.hmget(key, hset_keys)
                plan.append((view, features, len(redis_keys)))
            values = pipe.execute()
        out, i = [], 0
        for view, features, n in plan:
            out.append([online._get_features_for_entity(v, view, features) for v in values[i : i + n]])
            i += n
        return out

    def read_one(self, view: str, key: dict[str, str], now: datetime | None = None) -> dict[str, Any] | None:
        return self.read(view, [key], now)[0]

    def read_service(self, service: Any, entity: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """Every feature of a FeatureService for one entity row (join keys plus request fields),
        on-demand views included; missing rows give ``None`` values."""
        projections = service.feature_view_projections
        plain = [p for p in projections if p.name_to_use() in self.views]
        rows = self.read_batch(
            [(p.name_to_use(), [{k: entity[k] for k in self.views[p.name_to_use()].join_keys}]) for p in plain], now
        )
        out: dict[str, Any] = {}
        for projection, (row,) in zip(plain, rows, strict=True):
            row = row or {}
            out.update({f.name: row.get(f.name) for f in projection.features})
        for projection in projections:
            if projection.name_to_use() not in self.views:
                out.update(
                    self._on_demand(projection.name_to_use(), {**entity, **out}, [f.name for f in projection.features])
                )
        return out

    def _on_demand(self, name: str, inputs: dict[str, Any], features: list[str]) -> dict[str, Any]:
        odfv = self._odfvs.get(name)
        if odfv is None:
            odfv = self._odfvs[name] = self.store.get_on_demand_feature_view(name)
        result = odfv.feature_transformation.udf({k: [v] for k, v in inputs.items()})
        return {f: result[f][0] for f in features}


def _stored_time(ts: int | str | None) -> datetime | None:
    """An ``event_ts`` of Feast's SQLite tables as Feast's own ``timestamp`` converter reads it:
    epoch seconds (Feast's adapter writes naive UTC times so), or an ISO string."""
    if ts is None:
        return None
    return datetime.fromisoformat(ts) if isinstance(ts, str) else datetime.fromtimestamp(int(ts))


_LISTS = frozenset(
    {
        "string_list_val",
        "int64_list_val",
        "int32_list_val",
        "float_list_val",
        "double_list_val",
        "bool_list_val",
        "bytes_list_val",
    }
)


def _value(proto: Any) -> Any:
    """A Feast ``Value`` protobuf as a Python value (what ``feast_value_type_to_python_type``
    gives for scalars and lists, by direct field access)."""
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    if kind in _LISTS:
        return list(getattr(proto, kind).val)
    if kind == "unix_timestamp_val":
        return datetime.fromtimestamp(proto.unix_timestamp_val, tz=UTC)
    if kind.endswith("_list_val") or kind.endswith("_set_val") or kind.startswith("map"):
        from feast.type_map import feast_value_type_to_python_type

        return feast_value_type_to_python_type(proto)
    return getattr(proto, kind)


def _decode(values: dict[str, Any], ts: datetime | None) -> dict[str, Any]:
    out = {name: _value(value) for name, value in values.items()}
    out["_event_ts"] = ts.astimezone(UTC) if ts is not None else None
    return out
