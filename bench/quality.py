"""Model quality on the public datasets, every model on the same split (README "Evaluation").

- Douban book + music: cross-platform lift. Target platform: books. The same held-out book
  interactions; training on books alone vs books plus music. All persons, and persons with at
  most 5 book events; an A/A comparison (books only, trained with two VAE seeds) that shows
  how far the training's randomness alone moves the same figures; and persons made sparse (a
  few random books kept, their music whole), the cold-start protocol of cross-domain studies.
- Taobao UserBehavior: top-K, the re-ranker's AUC, and top-K on the persons whose held-out item
  was carted or bought.
- MovieLens latest-small: ratings (>= 3.5) and tags.
- Synthetic drift scenario: a model trained before the last 15 days vs one retrained with them
  (the feedback period), both on the newest period's held-out items.

Popularity, EASE (or ItemKNN above 20k items), ItemKNN, the VAE, and VAE + re-ranker, side by
side; training speed (seconds per epoch, persons per second) beside EASE's wall time.

    make bench-quality        # or: python -m bench.quality --datasets douban,taobao,movielens,synthetic
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from bench.common import console, publish, work_dir
from pipelines.config import Settings, Workdir
from pipelines.ingest import ingest_sources
from pipelines.lake import Lake
from pipelines.synthetic import SyntheticConfig, generate
from training.data import Split
from training.data import split as make_split
from training.experiment import ExperimentConfig, ExperimentResult, events_on_platform, run, sparse_persons
from training.metrics import ndcg_at_k, ranking_report

MODELS = ("popularity", "ease", "itemknn", "vae", "vae+ranker")
SPARSE = "sparse(<=5 events on the platform)"
SPARSE_ELSEWHERE = "sparse, >=10 events elsewhere"  # the sparse persons the other platforms know
# The sparse persons with no events elsewhere: both arms read the same events of theirs, so
# their lift is only what the other persons' events (and the training's randomness) make.
SPARSE_NOTHING_ELSEWHERE = "sparse, no events elsewhere"
GROUPS = ("all", SPARSE, SPARSE_ELSEWHERE, SPARSE_NOTHING_ELSEWHERE)
SIMULATED_BOOKS = 3  # books a person made sparse keeps (simulate_sparse)
RANKER_SEEDS = (1, 2)  # the re-ranker's other seeds, measured beside the shipped one (seed 0)


def lake_of(name: str, base: Path, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    root = base / "lakes" / name
    settings = Settings(workdir=root, data_dir=data_dir, pseudonym_key="bench-key")
    lake = Lake(Workdir.at(root).lake)
    if lake.n_events() == 0:
        if name == "synthetic":
            raw = generate(base / "raw-synthetic", SyntheticConfig(n_events=150_000, seed=3, drifting_share=0.9))
            ingest_sources([("synthetic", raw)], Workdir.at(root), settings)
        else:
            ingest_sources([(name, None)], Workdir.at(root), settings)
    return lake.events(), lake.table("items"), lake.table("persons")


def _interval(statistic: Any, n: int, draws: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic`` (draws x n resampled person indices →
    draws values), persons resampled with a fixed seed."""
    values = statistic(np.random.default_rng(0).integers(0, n, (draws, n)))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def versus_best_baseline(
    ranked: dict[str, np.ndarray], relevant: list[set[int]], mask: np.ndarray | None = None, draws: int = 2000
) -> dict[str, Any]:
    """VAE + re-ranker against the better of EASE/ItemKNN on NDCG@20, paired by person: the mean
    difference and its 95% bootstrap interval (persons resampled, seeded). A difference whose
    interval spans 0 is a tie at this test-set size."""
    keep = np.ones(len(relevant), dtype=bool) if mask is None else mask
    has = keep & np.array([bool(r) for r in relevant])
    rel = [relevant[i] for i in np.flatnonzero(has)]
    per = {m: ndcg_at_k(ranked[m][has], rel, 20) for m in ("ease", "itemknn", "vae+ranker") if m in ranked}
    baseline = max((m for m in per if m != "vae+ranker"), key=lambda m: per[m].mean())
    diff = per["vae+ranker"] - per[baseline]
    lo, hi = _interval(lambda pick: diff[pick].mean(axis=1), len(diff), draws) if len(diff) else (0.0, 0.0)
    base = float(per[baseline].mean()) if len(diff) else 0.0
    return {
        "baseline": baseline,
        "persons": int(len(diff)),
        "ndcg20_delta": round(float(diff.mean()) if len(diff) else 0.0, 5),
        "ndcg20_delta_ci95": [round(float(lo), 5), round(float(hi), 5)],
        "relative": round(float(diff.mean()) / base, 4) if base > 0 else None,
        "relative_ci95": [round(float(lo) / base, 4), round(float(hi) / base, 4)] if base > 0 else None,
    }


def paired_lift(
    both: ExperimentResult, alone: ExperimentResult, rows: np.ndarray, model: str = "vae+ranker", draws: int = 2000
) -> tuple[float, list[float]]:
    """NDCG@20(both) / NDCG@20(alone) - 1 of ``model`` over the persons ``rows`` (the two arms hold
    out the same pairs for the same persons) and its 95% bootstrap interval, persons resampled,
    paired, seeded."""
    b, a = _ndcg20(both, both.ranked[model], rows), _ndcg20(alone, alone.ranked[model], rows)
    return clustered_lift(np.arange(len(rows)), b, a, draws)  # one test per person


def lift_by_ranker_seed(both: ExperimentResult, alone: ExperimentResult, mask: np.ndarray) -> dict[str, float]:
    """NDCG@20(both) / NDCG@20(alone) - 1 of VAE + re-ranker for the persons in ``mask``, with
    the re-ranker of each seed in both arms: how much of the lift the re-ranker's own randomness
    could make."""
    rows = np.flatnonzero(mask)
    out = {}
    for seed, ranked in both.ranker_seeds.items():
        a, b = _ndcg20(alone, alone.ranker_seeds[seed], rows).mean(), _ndcg20(both, ranked, rows).mean()
        out[str(seed)] = round(float(b / max(a, 1e-12) - 1), 4)
    return out


def _ndcg20(result: ExperimentResult, ranked: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-person NDCG@20 of ``ranked`` (one of ``result``'s ranked lists) for ``rows``."""
    return ndcg_at_k(ranked[rows], [result.relevant[i] for i in rows], 20)


def summarise(result: ExperimentResult, split: Split) -> dict[str, Any]:
    history = result.history
    persons = len(split.train_events["person_id"].unique())
    return {
        "metrics": result.metrics,
        "vs_best_baseline": versus_best_baseline(result.ranked, result.relevant),
        "breakdown": result.breakdown,
        "reranker": {k: v for k, v in result.classification.items() if isinstance(v, int | float)},
        "split": {k: v for k, v in result.split_info.items() if k != "ranker"},
        "speed": {
            "vae_seconds_per_epoch": round(history.seconds_per_epoch, 2),
            "vae_persons_per_second": round(persons / max(history.seconds_per_epoch, 1e-9)),
            "vae_epochs": len(history.epochs),
            "vae_train_seconds": round(history.seconds, 1),
            "ease_or_itemknn_seconds": round(result.timings.get("ease_seconds", result.timings["itemknn_seconds"]), 2),
        },
        "timings": {k: round(v, 1) for k, v in result.timings.items()},
        # VAE + re-ranker NDCG@20 with the re-ranker trained on other seeds (same pairs, same
        # test candidates): how much of a difference its own randomness can make.
        "ranker_seeds_ndcg20": {str(seed): m["ndcg@20"] for seed, m in result.seed_metrics().items()},
    }


def restrict(split: Split, platform: str) -> Split:
    """The single-platform arm: the same held-out pairs, only ``platform``'s events to learn from."""
    return replace(
        split,
        train_events=split.train_events[split.train_events["platform"] == platform],
        test_events=split.test_events[split.test_events["platform"] == platform],
    )


def douban(base: Path, data_dir: Path, config: ExperimentConfig, splits: int = 1) -> dict[str, Any]:
    events, items, persons = lake_of("douban", base, data_dir)
    split = make_split(events, seed=0, target_platform="douban_book")
    both = run(split, items, persons, base / "scratch" / "douban-both", config)
    alone = run(restrict(split, "douban_book"), items, persons, base / "scratch" / "douban-book", config)
    out: dict[str, Any] = {
        "book_plus_music": summarise(both, split),
        "book_only": summarise(alone, restrict(split, "douban_book")),
    }
    lift = {}
    for group in ("all", SPARSE):
        b = both.metrics if group == "all" else both.breakdown.get(SPARSE, {})
        a = alone.metrics if group == "all" else alone.breakdown.get(SPARSE, {})
        for model in MODELS:
            if model in a and model in b and a[model]["ndcg@20"] > 0:
                lift[f"{group}/{model}"] = round(b[model]["ndcg@20"] / a[model]["ndcg@20"] - 1, 4)
    out["cross_platform_lift_ndcg20"] = lift
    sparse = sparse_persons(split, pd.Index(both.holdout.persons))
    out["cross_platform_lift_sparse_ci95"] = paired_lift(both, alone, np.flatnonzero(sparse))[1]
    out["cross_platform_lift_sparse_by_ranker_seed"] = lift_by_ranker_seed(both, alone, sparse)
    out["vs_best_baseline_sparse"] = versus_best_baseline(both.ranked, both.relevant, sparse)
    out["sparse_persons"] = both.breakdown.get(SPARSE, {}).get("vae+ranker", {}).get("persons", 0)
    extra = replace(config, ranker_seeds=())
    arms = [(split, both, alone)]
    for seed in range(1, splits):
        console.print(f"douban: split {seed + 1} of {splits}")
        other = make_split(events, seed=seed, target_platform="douban_book")
        arms.append(
            (
                other,
                run(other, items, persons, base / "scratch" / f"douban-both-{seed}", extra),
                run(restrict(other, "douban_book"), items, persons, base / "scratch" / f"douban-book-{seed}", extra),
            )
        )
    # An A/A comparison on every split: books only, trained again with the VAE's next seed,
    # against books only. No music on either side: what the training's randomness alone moves.
    reseeded = replace(extra, train=replace(config.train, seed=config.train.seed + 1))
    again = []
    for seed, (other, _, books) in enumerate(arms):
        console.print(f"douban: books only with VAE seed {reseeded.train.seed}, split {seed + 1} of {splits}")
        scratch = base / "scratch" / f"douban-book-reseeded-{seed}"
        again.append((other, run(restrict(other, "douban_book"), items, persons, scratch, reseeded), books))
    out["cross_platform_lift_pooled"] = pooled_lift(arms)
    out["book_only_reseeded_pooled"] = pooled_lift(again)
    out["book_only_reseeded_pooled"]["vae_seeds"] = [config.train.seed + 1, config.train.seed]
    out["simulated_sparse"] = simulated_sparse_lift(split, items, persons, base, extra)
    return out


def clustered_lift(
    codes: np.ndarray, both: np.ndarray, alone: np.ndarray, draws: int = 2000
) -> tuple[float, list[float]]:
    """sum(both) / sum(alone) - 1 over tests (``codes``: each test's person, 0..P-1) and its 95%
    bootstrap interval resampling persons, each with all of its tests (seeded)."""
    if not len(codes):
        return 0.0, [0.0, 0.0]
    n = int(codes.max()) + 1
    sums = np.stack([np.bincount(codes, both, n), np.bincount(codes, alone, n)])  # per person
    lift = float(sums[0].sum() / max(sums[1].sum(), 1e-12) - 1)
    lo, hi = _interval(
        lambda pick: sums[0][pick].sum(axis=1) / np.maximum(sums[1][pick].sum(axis=1), 1e-12) - 1, n, draws
    )
    return round(lift, 4), [round(lo, 4), round(hi, 4)]


def simulated_sparse_lift(
    split: Split, items: pd.DataFrame | None, persons: pd.DataFrame | None, base: Path, config: ExperimentConfig
) -> dict[str, Any]:
    """The cross-platform lift for persons made sparse on books (:func:`simulate_sparse` on
    ``split``): both arms trained on the simulated split, scored on those persons' test items."""
    keep = SIMULATED_BOOKS
    simulated, chosen = simulate_sparse(split, "douban_book", keep=keep)
    console.print(f"douban: {len(chosen)} persons made sparse ({keep} book items kept), both arms")
    both = run(simulated, items, persons, base / "scratch" / "douban-simulated-both", config)
    alone = run(restrict(simulated, "douban_book"), items, persons, base / "scratch" / "douban-simulated-book", config)
    rows = np.flatnonzero(pd.Index(both.holdout.persons).isin(chosen))
    report: dict[str, Any] = {"persons": len(rows), "kept_items": keep, "lift": {}, "lift_ci95": {}, "ndcg20": {}}
    for m in MODELS:
        report["lift"][m], report["lift_ci95"][m] = paired_lift(both, alone, rows, m)
        report["ndcg20"][m] = {
            "book_plus_music": round(float(_ndcg20(both, both.ranked[m], rows).mean()), 4),
            "book_only": round(float(_ndcg20(alone, alone.ranked[m], rows).mean()), 4),
        }
    return report


def events_elsewhere(split: Split, persons: pd.Index) -> np.ndarray:
    """Per person: events (in the test view) on platforms other than the held-out item's."""
    total = split.test_events.groupby("person_id").size().reindex(persons, fill_value=0).to_numpy()
    return (total - events_on_platform(split, persons)).astype(np.int64)


def in_group(group: str, split: Split, persons: pd.Index) -> np.ndarray:
    """Per person: a member of ``group`` (one of :data:`GROUPS`) on ``split``?"""
    if group == "all":
        return np.ones(len(persons), dtype=bool)
    keep = sparse_persons(split, persons)
    if group == SPARSE_ELSEWHERE:
        return keep & (events_elsewhere(split, persons) >= 10)
    if group == SPARSE_NOTHING_ELSEWHERE:
        return keep & (events_elsewhere(split, persons) == 0)
    if group != SPARSE:
        raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")
    return keep


def simulate_sparse(
    split: Split, platform: str, keep: int = 3, share: float = 0.5, seed: int = 0
) -> tuple[Split, pd.Index]:
    """Simulated sparse persons, the cold-start protocol of cross-domain studies: a seeded
    ``share`` of the test persons with more than 5 events on ``platform`` keep ``keep`` of their
    training items there, drawn at random, and lose that platform's other events and their
    validation items, in both views. Their other platforms' events and their test items stay.
    Returns the split and those persons."""
    persons = pd.Index(sorted(split.test["person_id"].unique()))
    dense = persons[events_on_platform(split, persons) > 5]
    rng = np.random.default_rng(seed)
    chosen = pd.Index(sorted(rng.choice(np.asarray(dense), size=round(share * len(dense)), replace=False)))
    ev = split.train_events
    on = ev["platform"].eq(platform) & ev["person_id"].isin(chosen) & ev["item_id"].notna()
    pairs = ev.loc[on, ["person_id", "item_id"]].drop_duplicates()
    pairs = pairs.iloc[rng.permutation(len(pairs))]
    kept = pd.MultiIndex.from_frame(pairs[pairs.groupby("person_id").cumcount() < keep])

    def cut(events: pd.DataFrame) -> pd.DataFrame:
        theirs = events["platform"].eq(platform) & events["person_id"].isin(chosen)
        key = pd.MultiIndex.from_frame(events[["person_id", "item_id"]].fillna(""))
        return events[~theirs.to_numpy() | key.isin(kept)]

    simulated = replace(
        split,
        train_events=cut(split.train_events),
        test_events=cut(split.test_events),
        valid=split.valid[~split.valid["person_id"].isin(chosen)].reset_index(drop=True),
    )
    return simulated, chosen


def pooled_lift(arms: list[tuple[Split, ExperimentResult, ExperimentResult]], draws: int = 2000) -> dict[str, Any]:
    """The cross-platform lift over several random splits (seeds 0, 1, ...): every (person,
    split) test counts once, NDCG@20(both) / NDCG@20(alone) - 1 over the pooled tests, for all
    persons, for the sparse ones, for the sparse ones with at least 10 events on the other
    platforms (those the cross-platform profile can say something about) and for those with
    none (see :data:`GROUPS`); 95% bootstrap interval resampling persons with all their
    splits' tests (a person's tests on different splits are not independent)."""
    out: dict[str, Any] = {"splits": len(arms), "seeds": list(range(len(arms)))}
    for group in GROUPS:
        person_ids: list[Any] = []
        per_model: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
        for split, both, alone in arms:
            ids = pd.Index(both.holdout.persons)
            rows = np.flatnonzero(in_group(group, split, ids))
            person_ids += list(ids[rows])
            for m in MODELS:
                if m in both.ranked and m in alone.ranked:
                    pair = np.stack([_ndcg20(both, both.ranked[m], rows), _ndcg20(alone, alone.ranked[m], rows)])
                    per_model[m].append(pair)
        codes, uniques = pd.factorize(pd.Series(person_ids))
        report: dict[str, Any] = {"tests": len(codes), "persons": len(uniques), "lift": {}, "lift_ci95": {}}
        for m, parts in per_model.items():
            if parts:
                both_ndcg, alone_ndcg = np.concatenate(parts, axis=1)
                lift, ci = clustered_lift(codes, both_ndcg, alone_ndcg, draws)
                report["lift"][m], report["lift_ci95"][m] = lift, ci
        out[group] = report
    return out


def taobao(base: Path, data_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    events, items, persons = lake_of("taobao", base, data_dir)
    split = make_split(events, seed=0)
    result = run(split, items, persons, base / "scratch" / "taobao", config)
    out = summarise(result, split)
    # persons whose held-out item was carted or bought
    strong = events[events["action"].isin(["cart", "purchase"])][["person_id", "item_id"]].drop_duplicates()
    key = set(zip(strong["person_id"], strong["item_id"], strict=True))
    persons_sorted = list(result.holdout.persons)
    held = split.test.groupby("person_id")["item_id"].first()
    mask = np.array([(p, held.get(p)) in key for p in persons_sorted])
    out["buy_or_cart_targets"] = (
        {
            m: ranking_report(r[mask], [result.relevant[i] for i in np.flatnonzero(mask)])
            for m, r in result.ranked.items()
        }
        if mask.any()
        else {}
    )
    return out


def movielens(base: Path, data_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    events, items, persons = lake_of("movielens", base, data_dir)
    split = make_split(events, seed=0)
    return summarise(run(split, items, persons, base / "scratch" / "movielens", config), split)


def synthetic_retraining(base: Path, data_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    """Does retraining on the feedback period help on the newest period?"""
    events, items, persons = lake_of("synthetic", base, data_dir)
    cutoff = events["ts"].max() - pd.Timedelta(days=15)
    retrained = make_split(events, seed=0)
    recent_test = retrained.test[retrained.test["ts"] > cutoff]
    retrained = replace(retrained, test=recent_test)
    old = make_split(events[events["ts"] <= cutoff], seed=0)
    stale = replace(old, test=recent_test, test_events=retrained.test_events)
    a = run(stale, items, persons, base / "scratch" / "synthetic-stale", config)
    b = run(retrained, items, persons, base / "scratch" / "synthetic-retrained", config)
    ndcg_a, ndcg_b = a.metrics["vae+ranker"]["ndcg@20"], b.metrics["vae+ranker"]["ndcg@20"]
    before, after = a.seed_metrics(), b.seed_metrics()
    return {
        "test_persons": int(recent_test["person_id"].nunique()),
        "trained_before_feedback_period": a.metrics,
        "retrained_with_feedback_period": b.metrics,
        "ndcg20_before": ndcg_a,
        "ndcg20_retrained": ndcg_b,
        "retraining_improves_ndcg20": bool(ndcg_b > ndcg_a),
        "relative_change": round(ndcg_b / max(ndcg_a, 1e-12) - 1, 4),
        # the same comparison for each seed of the re-ranker (both models trained with it)
        "ranker_seeds_relative_change": {
            str(seed): round(after[seed]["ndcg@20"] / max(m["ndcg@20"], 1e-12) - 1, 4) for seed, m in before.items()
        },
    }


def table_for(name: str, metrics: dict[str, dict[str, float]]) -> Table:
    table = Table(title=name)
    table.add_column("model")
    for c in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"):
        table.add_column(c, justify="right")
    for model in MODELS:
        if model in metrics:
            table.add_row(
                model,
                *(
                    f"{metrics[model][c]:.4f}"
                    for c in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50")
                ),
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="douban,taobao,movielens,synthetic")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--douban-splits",
        type=int,
        default=3,
        help="random splits (seeds 0..N-1) pooled for Douban's cross-platform lift; the tables are seed 0's",
    )
    args = parser.parse_args()
    data_dir = args.data_dir or Settings().data_dir
    base = work_dir("quality")
    shutil.rmtree(base / "scratch", ignore_errors=True)
    config = ExperimentConfig(ranker_seeds=RANKER_SEEDS)
    runners = {
        "douban": lambda b, d, c: douban(b, d, c, args.douban_splits),
        "taobao": taobao,
        "movielens": movielens,
        "synthetic": synthetic_retraining,
    }
    results: dict[str, Any] = {"config": config.to_dict(), "datasets": {}}
    metrics: dict[str, float] = {}
    for name in args.datasets.split(","):
        console.print(f"[bold]{name}[/bold]")
        started = time.perf_counter()
        results["datasets"][name] = out = runners[name](base, data_dir, config)
        out["wall_seconds"] = round(time.perf_counter() - started, 1)
        tables = {
            "douban": [
                ("douban book (books + music)", out.get("book_plus_music", {}).get("metrics")),
                ("douban book (books only)", out.get("book_only", {}).get("metrics")),
            ],
            "synthetic": [
                ("synthetic, newest period: trained before", out.get("trained_before_feedback_period")),
                ("synthetic, newest period: retrained", out.get("retrained_with_feedback_period")),
            ],
        }
        for title, m in tables.get(name, [(name, out.get("metrics"))]):
            if m:
                console.print(table_for(title, m))
                for model, values in m.items():
                    metrics[f"{title}.{model}.ndcg20"] = values["ndcg@20"]
        if name == "douban":
            console.print(f"cross-platform lift in NDCG@20: {out['cross_platform_lift_ndcg20']}")
            if pooled := out.get("cross_platform_lift_pooled"):
                console.print(f"pooled over {pooled['splits']} splits: {pooled}")
            if again := out.get("book_only_reseeded_pooled"):
                console.print(f"books only, VAE seeds {again['vae_seeds']} (A/A), pooled: {again}")
    publish("quality", results, metrics)


if __name__ == "__main__":
    main()
