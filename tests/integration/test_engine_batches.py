"""The service answers the requests in flight in a worker together (one online read per view,
one VAE pass): every answer must be exactly the one the request gets alone (items, scores,
explanations, cold starts and errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.engine import Ask, UnknownPlatform

pytestmark = pytest.mark.slow


def _asks(sequences: Path, platforms: list[str]) -> list[Ask]:
    seq = pd.read_parquet(sequences, columns=["person_id", "seq_platforms"])
    persons = seq.groupby("person_id").tail(1).sample(40, random_state=1)
    now = datetime(2024, 3, 1, tzinfo=UTC)
    asks = []
    for r, (person, seen) in enumerate(zip(persons["person_id"], persons["seq_platforms"], strict=True)):
        target = [str(list(seen)[-1]), None, platforms[r % len(platforms)]][r % 3]  # own, any, maybe another
        asks.append(
            Ask(person, k=[20, 5, 200][r % 3], platform=target, exclude_seen=r % 4 != 1, explain=r % 5 == 0, now=now)
        )
    asks[3] = Ask(asks[5].person_id, 20, asks[5].platform, asks[5].exclude_seen, not asks[5].explain, now)  # twice
    asks[7] = Ask("nobody-at-all", 10, platforms[0], now=now)  # unknown: popularity
    asks[11] = Ask(asks[12].person_id, 10, "mars", now=now)  # an unknown platform: its own error
    return asks


def test_a_batch_answers_each_request_as_alone(trained: tuple) -> None:
    from serving.loader import engine

    settings, workdir, _, _ = trained
    eng = engine(settings, workdir)
    asks = _asks(workdir.feature_data / "person_sequence.parquet", sorted(eng.platforms))
    alone: list[object] = []
    for ask in asks:
        try:
            alone.append(eng.recommend(ask.person_id, ask.k, ask.platform, ask.exclude_seen, ask.explain, ask.now))
        except UnknownPlatform as e:
            alone.append(e)
    for size in (2, 3, 8, 13, len(asks)):  # up to a worker's limit and past it
        together: list[object] = []
        for lo in range(0, len(asks), size):
            together += eng.recommend_many(asks[lo : lo + size])
        for a, b in zip(alone, together, strict=True):
            if isinstance(a, Exception):
                assert type(a) is type(b) and str(a) == str(b)
            else:
                assert a == b
    assert any(isinstance(a, Exception) for a in alone)
    assert sum(1 for a in alone if not isinstance(a, Exception) and a.cold_start is None) > 20


def test_the_vae_encodes_a_person_beside_others_exactly_as_alone(trained: tuple) -> None:
    from serving.loader import engine

    settings, workdir, _, _ = trained
    rec = engine(settings, workdir).recommender
    seq = pd.read_parquet(workdir.feature_data / "person_sequence.parquet").groupby("person_id").tail(1)
    for seed in range(10):
        rows = [dict(r) for r in seq.sample(8, random_state=seed).to_dict("records")]
        for size in (2, 3, 8):
            together = rec.encode(rows[:size])
            for r, row in enumerate(rows[:size]):
                for part, whole in zip(rec.encode([row]), together, strict=True):
                    np.testing.assert_array_equal(part[0], whole[r])


def test_item_stats_refreshed_off_the_request_path_give_the_same_answers(trained: tuple) -> None:
    """After ``refresh_item_stats`` the cache holds every item's ``item_stats`` row as the
    online store has it, requests read no item stats even once the cache is due (the service's
    loader thread refreshes it), and the answers are those of an engine that reads them per
    request."""
    from serving.engine import _numbers
    from serving.loader import engine
    from training import ranker

    settings, workdir, _, _ = trained
    on_request, refreshed = engine(settings, workdir), engine(settings, workdir)
    refreshed.refresh_item_stats(chunk=7, pause=0.0)
    assert not refreshed.item_stats_due()
    names = refreshed.recommender.vocab.items
    rows = refreshed.reader.read("item_stats", [{"item_id": i} for i in names])
    want = np.array([_numbers(r, ranker.FEAST_ITEM) for r in rows], np.float32)
    np.testing.assert_array_equal(refreshed._item_features(np.arange(len(names))), want)

    reads: list[str] = []
    read = refreshed.reader.read
    refreshed.reader.read = lambda view, keys, now=None: reads.append(view) or read(view, keys, now)  # type: ignore[method-assign]
    refreshed._item_cache_seconds = 0.0  # due at once: a request must still not read item stats
    asks = _asks(workdir.feature_data / "person_sequence.parquet", sorted(refreshed.platforms))
    assert refreshed.item_stats_due()
    got = refreshed.recommend_many(asks)
    assert "item_stats" not in reads and "person_activity" in reads
    for a, b in zip(on_request.recommend_many(asks), got, strict=True):
        if isinstance(a, Exception):
            assert type(a) is type(b) and str(a) == str(b)
        else:
            assert a == b
