"""The scoring engine behind the REST service, batch ``recommend`` and the MLflow model:
identity → online features → candidates → re-ranking → response, with cold starts.

Everything a request needs comes from the online store (Feast's SQLite or Redis tables) in
one batched read per view; item statistics are cached for ``item_cache_seconds`` because they
only change at materialization. The service refreshes that cache off the request path
(:meth:`Engine.refresh_item_stats`, from its loader thread), so requests never read them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np

from pipelines.feature_store import OnlineReader
from pipelines.identity import Pseudonymiser
from training import ranker
from training.recommender import Recommender

log = logging.getLogger(__name__)
VIEWS = ("person_sequence", "person_profile", "person_activity", "item_stats", "user_identity", "person_embedding")
ITEM_REFRESH_PAUSE = 0.002  # seconds between refresh_item_stats's chunks while requests run beside it
PERSON_COLUMNS = ("top_categories", "category_affinity", "platform_names", "platform_shares")


@dataclass
class Item:
    item_id: str
    platform: str
    score: float
    rank: int
    explanation: dict[str, Any] | None = None


@dataclass
class Recommendation:
    person_id: str
    person_known: bool
    cold_start: str | None  # None, "cross_platform" or "popularity"
    items: list[Item] = field(default_factory=list)


@dataclass(frozen=True)
class Ask:
    """One ``/recommend`` request, as :meth:`Engine.recommend_many` takes it."""

    person_id: str
    k: int = 20
    platform: str | None = None
    exclude_seen: bool = True
    explain: bool = False
    now: datetime | None = None


class UnknownPlatform(ValueError):
    pass


def _numbers(row: dict[str, Any] | None, names: list[str]) -> list[Any]:
    """A feature row's values of ``names``, NaN where the row or the value is missing."""
    row = row or {}
    return [np.nan if row.get(name) is None else row[name] for name in names]


class Engine:
    def __init__(
        self,
        recommender: Recommender,
        store: Any,
        pseudonymiser: Pseudonymiser,
        model_version: str,
        item_cache_seconds: float = 60.0,
    ) -> None:
        self.recommender = recommender
        self.store = store
        self.pseudonymiser = pseudonymiser
        self.model_version = model_version
        self.reader = OnlineReader(store, VIEWS)
        self.recency = store.get_on_demand_feature_view("person_recency").feature_transformation.udf
        self.platforms = set(recommender.vocab.platforms)
        self.category_of = {
            i: c for i, c in zip(recommender.vocab.items, recommender.vocab.item_category, strict=True) if c
        }
        self.platform_of = dict(zip(recommender.vocab.items, recommender.vocab.item_platform, strict=True))
        if recommender.booster is not None:
            # One request per thread: ~100 rows are too few to share out, and idle OpenMP
            # threads would spin on the cores the other workers need.
            recommender.booster.set_param({"nthread": 1})
            ranker.fast_trees(recommender.booster)  # built and checked now, not by the first request
        # Every item's FEAST_ITEM values (NaN where missing) by decoder index, and whether they
        # were read since the cache was last cleared: a candidate's row is an array lookup.
        self._item_stats = np.full((recommender.vocab.n_items, len(ranker.FEAST_ITEM)), np.nan, dtype=np.float32)
        self._item_read = np.zeros(recommender.vocab.n_items, dtype=bool)
        self._item_cache_at = 0.0
        self._item_cache_seconds = item_cache_seconds
        self._refreshed_elsewhere = False  # set by refresh_item_stats
        self._lock = threading.Lock()

    # -- identity -------------------------------------------------------------------------
    def person_of(self, platform: str, user_id: str) -> str:
        """The person of a platform account: its identity link, else the account's own person
        (what identity resolution gives an account without links)."""
        user = self.pseudonymiser.user(platform, user_id)
        row = self.reader.read_one("user_identity", {"user_id": user})
        return row["person_id"] if row and row.get("person_id") else self.pseudonymiser.person(user)

    def check_platform(self, platform: str | None) -> None:
        if platform is not None and platform not in self.platforms:
            raise UnknownPlatform(
                f"unknown platform {platform!r}: this model knows {', '.join(sorted(self.platforms))}"
            )

    # -- features -------------------------------------------------------------------------
    def _item_features(self, items: np.ndarray) -> np.ndarray:
        """The re-ranker's item features (items x ``ranker.FEAST_ITEM``, NaN where missing) of
        decoder indices ``items``; the online store's ``item_stats`` rows are read once per
        ``item_cache_seconds`` (they only change at materialization), here when a request needs
        them, unless :meth:`refresh_item_stats` keeps the cache fresh."""
        now = time.monotonic()
        with self._lock:
            if not self._refreshed_elsewhere and now - self._item_cache_at > self._item_cache_seconds:
                self._item_read[:] = False
                self._item_cache_at = now
            missing = np.unique(items[~self._item_read[items]])
        if len(missing):
            self._read_item_stats(missing)
        with self._lock:
            return self._item_stats[items]

    def _read_item_stats(self, items: np.ndarray) -> None:
        names = self.recommender.vocab.items
        rows = self.reader.read("item_stats", [{"item_id": names[j]} for j in items])
        values = np.array([_numbers(row, ranker.FEAST_ITEM) for row in rows], dtype=np.float32)
        with self._lock:
            self._item_stats[items] = values.reshape(len(items), len(ranker.FEAST_ITEM))
            self._item_read[items] = True

    def refresh_item_stats(self, chunk: int = 64, pause: float = ITEM_REFRESH_PAUSE) -> None:
        """Read every item's ``item_stats`` row into the cache, ``chunk`` items at a time with
        a ``pause`` between chunks, and from then on leave the cache's refreshing to the caller
        (:meth:`item_stats_due` says when): requests stop reading item stats themselves. The
        service calls this from its loader thread before it serves a model and whenever it is
        due. Left to requests, the refresh fell on the batches right after the cache expired:
        they re-read every candidate's row, 2-4x a batch's usual time for the first few (about
        100 ms of extra work per worker per expiry), a burst in the latency's tail every
        ``item_cache_seconds``. Here a request running beside it competes for the GIL with one
        chunk at a time."""
        started = time.monotonic()
        with self._lock:
            self._refreshed_elsewhere = True
        n = self.recommender.vocab.n_items
        for lo in range(0, n, chunk):
            self._read_item_stats(np.arange(lo, min(lo + chunk, n)))
            if pause:
                time.sleep(pause)
        with self._lock:
            self._item_cache_at = started

    def item_stats_due(self) -> bool:
        """Whether the item-stats cache is older than ``item_cache_seconds``."""
        return time.monotonic() - self._item_cache_at > self._item_cache_seconds

    def _feast_columns(
        self,
        person_id: str,
        profile: dict[str, Any] | None,
        platforms: np.ndarray,
        items: np.ndarray,
        now: datetime,
        activity: dict[str, dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """The ``ranker_v1`` columns of one person's candidates (``items``: decoder indices);
        ``activity``: the person's ``person_activity`` rows by platform, when already read (else
        they are read here)."""
        n = len(items)
        profile = profile or {}
        wanted = sorted(set(platforms.tolist()))
        if activity is None:
            activity = dict(
                zip(
                    wanted,
                    self.reader.read("person_activity", [{"person_id": person_id, "platform": p} for p in wanted]),
                    strict=True,
                )
            )
        recency = self.recency({"request_ts": [int(now.timestamp())], "last_event_ts": [profile.get("last_event_ts")]})
        person = {
            "events_total_30d": profile.get("events_total_30d"),
            "active_platforms_30d": profile.get("active_platforms_30d"),
            "seconds_since_last_event": recency["seconds_since_last_event"][0] if profile else None,
        }
        cols: dict[str, Any] = {
            name: np.full(n, np.nan if value is None else value, dtype=np.float32) for name, value in person.items()
        }
        for name in PERSON_COLUMNS:
            cols[name] = [profile.get(name)] * n
        # Activity: one value per (feature, platform), spread over the candidates of that platform.
        position = {p: i for i, p in enumerate(wanted)}
        of_platform = np.fromiter((position[p] for p in platforms), dtype=np.intp, count=n)
        table = np.array([_numbers(activity.get(p), ranker.FEAST_ACTIVITY) for p in wanted], dtype=np.float32)
        spread = table.reshape(len(wanted), len(ranker.FEAST_ACTIVITY))[of_platform]
        for j, name in enumerate(ranker.FEAST_ACTIVITY):
            cols[name] = spread[:, j]
        stats = self._item_features(items)
        for j, name in enumerate(ranker.FEAST_ITEM):
            cols[name] = stats[:, j]
        return cols

    # -- scoring --------------------------------------------------------------------------
    def recommend(
        self,
        person_id: str,
        k: int = 20,
        platform: str | None = None,
        exclude_seen: bool = True,
        explain: bool = False,
        now: datetime | None = None,
    ) -> Recommendation:
        result = self.recommend_many([Ask(person_id, k, platform, exclude_seen, explain, now)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_many(self, asks: list[Ask]) -> list[Recommendation | Exception]:
        """:meth:`recommend` for several requests at once (the service's requests in flight in
        a worker), each answered exactly as alone: one online read per view for all of them,
        one VAE pass (:meth:`Recommender.candidates_each`), then each person's own candidates
        and re-ranking. A request's own error (an unknown platform) is its entry."""
        started = datetime.now(UTC)
        out: list[Recommendation | Exception | None] = [None] * len(asks)
        valid = []
        for i, ask in enumerate(asks):
            try:
                self.check_platform(ask.platform)
            except UnknownPlatform as e:
                out[i] = e
                continue
            valid.append(i)
        keys = [{"person_id": asks[i].person_id} for i in valid]
        sequences, profiles = (
            self.reader.read_batch([("person_sequence", keys), ("person_profile", keys)]) if valid else ([], [])
        )
        known = []
        for i, sequence, profile in zip(valid, sequences, profiles, strict=True):
            if sequence is None or not sequence.get("seq_items"):
                out[i] = self._popular(asks[i].person_id, asks[i].k, asks[i].platform, sequence is not None)
            else:
                known.append((i, sequence, profile))
        rec = self.recommender
        each = rec.candidates_each(
            [sequence for _, sequence, _ in known],
            [set(sequence.get("seen_items") or sequence.get("seq_items") or []) for _, sequence, _ in known],
            [asks[i].platform for i, _, _ in known],
            [asks[i].exclude_seen for i, _, _ in known],
        )
        ranked = []
        for (i, sequence, profile), cands in zip(known, each, strict=True):
            if cands.items.shape[1] == 0:
                out[i] = self._popular(asks[i].person_id, asks[i].k, asks[i].platform, True)
                continue
            signals = rec.signal_columns(cands, [list(sequence.get("seq_platforms") or [None])[-1]])
            ranked.append((i, sequence, profile, cands, signals, sorted(set(signals["_platform"].tolist()))))
        # Every person's activity rows (one read) and every candidate's item row (the cache) at once.
        pairs = [(asks[i].person_id, p) for i, *_, wanted in ranked for p in wanted]
        rows = self.reader.read("person_activity", [{"person_id": q, "platform": p} for q, p in pairs]) if pairs else []
        activity = dict(zip(pairs, rows, strict=True))
        if ranked:  # every candidate's item row at once
            self._item_features(np.concatenate([cands.items[0] for *_, cands, _, _ in ranked]))
        xs, names = [], []
        for i, _, profile, cands, signals, wanted in ranked:
            ask = asks[i]
            names.append([rec.vocab.items[j] for j in cands.items[0]])
            mine = {p: activity[(ask.person_id, p)] for p in wanted}
            columns = self._feast_columns(
                ask.person_id, profile, signals["_platform"], cands.items[0], ask.now or started, mine
            )
            xs.append(rec.feature_matrix(signals, columns))
        scored = rec.rank_each([cands for *_, cands, _, _ in ranked], xs)  # one booster call
        for (i, sequence, profile, cands, _, _), item_ids, x, (order, probability) in zip(
            ranked, names, xs, scored, strict=True
        ):
            out[i] = self._answer(asks[i], sequence, profile, cands, cands.items[0], item_ids, x, order, probability)
        return cast(list[Recommendation | Exception], out)  # every entry is set above

    def _answer(
        self,
        ask: Ask,
        sequence: dict[str, Any],
        profile: dict[str, Any] | None,
        cands: Any,
        item_idx: np.ndarray,
        item_ids: list[str],
        x: np.ndarray,
        order: np.ndarray,
        probability: np.ndarray,
    ) -> Recommendation:
        rec, platform = self.recommender, ask.platform
        on_platform = (
            platform is None
            or platform in set(sequence.get("seq_platforms") or [])
            or platform in set((profile or {}).get("platform_names") or [])
        )
        top = order[0][: ask.k]
        out = Recommendation(ask.person_id, True, None if on_platform else "cross_platform")
        contributions = (
            ranker.contributions(rec.booster, x[top], rec.meta.get("prior"))
            if ask.explain and rec.booster is not None
            else None
        )
        for r, c in enumerate(top):
            item = Item(item_ids[c], str(rec.item_platform[item_idx[c]]), round(float(probability[0][c]), 6), r + 1)
            if ask.explain:
                item.explanation = self._explain(
                    contributions[r] if contributions is not None else None,
                    cands,
                    sequence,
                    rec.item_category[item_idx[c]],
                )
            out.items.append(item)
        return out

    def _popular(self, person_id: str, k: int, platform: str | None, known: bool) -> Recommendation:
        items = self.recommender.popular(platform, k)
        platform_of = self.platform_of
        return Recommendation(
            person_id,
            known,
            "popularity",
            [Item(i, platform_of[i], round(s, 6), r + 1) for r, (i, s) in enumerate(items)],
        )

    def _explain(
        self, contribution: np.ndarray | None, cands: Any, sequence: dict[str, Any], category: Any
    ) -> dict[str, Any]:
        features: list[list[Any]] = []
        if contribution is not None:
            values = contribution[:-1]  # the last column is the bias
            for j in np.argsort(-np.abs(values))[:5]:
                features.append([ranker.FEATURES[j], round(float(values[j]), 4)])
        seq_items = list(sequence.get("seq_items") or [])[-self.recommender.sequence_length :]
        weights = cands.attention[0][: len(seq_items)]
        order = np.argsort(-weights, kind="stable")
        rec = self.recommender
        same = [
            seq_items[i]
            for i in order
            if rec.vocab.item_index.get(seq_items[i]) is not None
            and rec.item_category[rec.vocab.item_index[seq_items[i]]] == category
        ]
        because = list(dict.fromkeys(same or [seq_items[i] for i in order]))[:3]
        return {"features": features, "because_of": because}

    def score(
        self, person_id: str, item_ids: list[str], now: datetime | None = None
    ) -> tuple[bool, list[float | None]]:
        """Interest probability of each item for the person (None for items the model does not know)."""
        now = now or datetime.now(UTC)
        rows = self.reader.read_batch(
            [("person_sequence", [{"person_id": person_id}]), ("person_profile", [{"person_id": person_id}])]
        )
        sequence, profile = rows[0][0], rows[1][0]
        rec = self.recommender
        known = [(i, rec.vocab.item_index[it]) for i, it in enumerate(item_ids) if it in rec.vocab.item_index]
        out: list[float | None] = [None] * len(item_ids)
        if not known:
            return sequence is not None, out
        idx = np.array([[j for _, j in known]], dtype=np.int64)
        seen = set((sequence or {}).get("seen_items") or [])
        cands = rec.candidates([sequence], [seen], None, exclude_seen=False, items=idx)
        signals = rec.signal_columns(cands, [list((sequence or {}).get("seq_platforms") or [None])[-1]])
        x = rec.feature_matrix(signals, self._feast_columns(person_id, profile, signals["_platform"], idx[0], now))
        _, probability = rec.rank(cands, x)
        for (i, _), p in zip(known, probability[0], strict=True):
            out[i] = round(float(p), 6)
        return sequence is not None, out
