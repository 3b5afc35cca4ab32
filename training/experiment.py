"""One training and evaluation run on a split: every model on the same held-out data.

The training view (events before each person's validation item) and the test view (events
before the test item) each get their own offline Feast tables, built by the same feature
pipelines as serving; models read their inputs through the ``vae_v1`` and ``ranker_v1``
FeatureServices with point-in-time retrieval at each person's cutoff. The VAE and the base
models learn on the training view; the re-ranker learns on the validation items; all models
are scored on the test items with full ranking over the items the person has not interacted
with (of the target platform, when there is one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.features import FeatureConfig
from training import baselines, ranker
from training.data import Split, Vocab, interactions, sequence_rows
from training.holdout import Holdout, evaluate, pair_features
from training.metrics import best_f1_threshold, ndcg_at_k, ranking_report, top_k
from training.ranker import RankerConfig
from training.recommender import Recommender
from training.trainer import History, PlatformDropout, TrainConfig, fit, infer
from training.vae import VAEConfig

log = logging.getLogger(__name__)
KS = (10, 20, 50)


@dataclass(frozen=True)
class ExperimentConfig:
    sequence_length: int = 50
    n_candidates: int = 100
    d_model: int = 64
    d_latent: int = 64
    d_hidden: int = 256
    n_layers: int = 1
    input_dropout: float = 0.3
    d_bag: int = 256  # the VAE's bag-of-items branch (0: the sequence encoder alone)
    # With a target platform: the weight of the other platforms' items in the VAE's
    # reconstruction term; they stay in its input (sequence and bag). At 0 the decoder learns
    # the target platform alone and the other platforms only inform the latent. On Douban
    # (target books, with music) the validation NDCG@20 of the VAE alone, against 1: all
    # persons 0.0502 vs 0.0431, persons with at most 5 book events 0.0682 vs 0.0637.
    other_platform_weight: float = 0.0
    # With a target platform: the share of persons whose other-platform events and items are
    # hidden from the VAE's encoder in each training batch (training.trainer.PlatformDropout).
    # Douban's validation NDCG@20 (VAE alone, seeds 0 and 1), against 0: all persons 0.0514
    # and 0.0536 vs 0.0502 and 0.0516; at most 5 book events 0.0694 and 0.0699 vs 0.0682, 0.0646.
    platform_dropout: float = 0.5
    min_item_count: int = 1
    ease_l2: float = 200.0
    train: TrainConfig = field(default_factory=TrainConfig)
    reranker: RankerConfig = field(default_factory=RankerConfig)
    # Other seeds of the re-ranker, trained on the same pairs (and the same held-out persons,
    # chosen with ``reranker.seed``) and scored on the same test candidates, to measure how
    # much its own randomness (row and column subsampling) moves the figures; the shipped
    # re-ranker is the one of ``reranker.seed``.
    ranker_seeds: tuple[int, ...] = ()
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExperimentResult:
    recommender: Recommender
    metrics: dict[str, dict[str, float]]  # model → Recall/NDCG@K on the test items
    breakdown: dict[str, dict[str, dict[str, float]]]  # slice → model → metrics
    classification: dict[str, float]  # re-ranker on the test candidates
    curves: dict[str, Any]  # ROC / PR points, VAE history, ranker curves
    timings: dict[str, float]
    split_info: dict[str, Any]
    history: History
    holdout: Holdout
    ranked: dict[str, np.ndarray] = field(default_factory=dict)  # model → (test persons, 50) decoder indices
    relevant: list[set[int]] = field(default_factory=list)
    ranker_seeds: dict[int, np.ndarray] = field(default_factory=dict)  # seed → VAE + re-ranker's (test persons, 50)

    def seed_metrics(self) -> dict[int, dict[str, float]]:
        """Recall/NDCG@K of VAE + re-ranker with the re-ranker of each seed."""
        return {seed: ranking_report(r, self.relevant, KS) for seed, r in self.ranker_seeds.items()}


class _View:
    """The offline Feast store of one event view (training or test)."""

    def __init__(
        self,
        root: Path,
        events: pd.DataFrame,
        items: pd.DataFrame | None,
        persons: pd.DataFrame | None,
        sequence_length: int,
    ) -> None:
        self.settings = Settings(workdir=root, profile="local", sequence_length=sequence_length)
        self.workdir = Workdir.at(root)
        fs.build_offline_tables(
            self.workdir,
            self.settings,
            events,
            FeatureConfig(sequence_length=sequence_length),
            items=items,
            persons=persons,
        )
        self.store = fs.open_store(self.workdir, self.settings)
        fs.apply(self.store)

    def sequences(self, persons: pd.Series, at: pd.Series) -> list[dict[str, Any] | None]:
        frame = fs.historical_features(
            self.store, pd.DataFrame({"person_id": persons, "event_timestamp": at}), fs.VAE_SERVICE
        )
        return sequence_rows(frame)

    def pair_features(
        self, persons: np.ndarray, items: np.ndarray, platforms: np.ndarray, at: np.ndarray
    ) -> pd.DataFrame:
        entity = pd.DataFrame(
            {
                "person_id": persons,
                "platform": platforms,
                "item_id": items,
                "event_timestamp": at,
                "request_ts": (pd.to_datetime(at, utc=True).astype("int64") // 10**9).astype(np.int64),
            }
        )
        return fs.historical_features(self.store, entity, fs.RANKER_SERVICE, day_grain=("item_stats",))


def _cutoffs(events: pd.DataFrame, held: pd.DataFrame) -> pd.DataFrame:
    """Per person in ``events``: the retrieval time (the held-out item's time, else just after
    the person's last event) and the person's seen items."""
    last = events.groupby("person_id")["ts"].max() + pd.Timedelta(microseconds=1)
    at = held.groupby("person_id")["ts"].min()
    frame = pd.DataFrame({"at": last})
    frame.loc[at.index.intersection(frame.index), "at"] = at
    return frame


def _relevant(held: pd.DataFrame, persons: pd.Index, vocab: Vocab) -> list[set[int]]:
    """Held-out decoder indices per person; items unknown to the model are kept as negative
    ids, so they count in the denominator and can never be hit."""
    out: list[set[int]] = [set() for _ in range(len(persons))]
    pos = {p: i for i, p in enumerate(persons)}
    unknown = -1
    for person, item in zip(held["person_id"], held["item_id"], strict=True):
        j = vocab.item_index.get(item)
        if j is None:
            j, unknown = unknown, unknown - 1
        out[pos[person]].add(j)
    return out


def _item_sets(pairs: pd.DataFrame, persons: pd.Index) -> list[set[str]]:
    grouped = pairs.groupby("person_id")["item_id"].agg(set)
    return [grouped.get(p, set()) for p in persons]


def _mask(scores: np.ndarray, seen: sp.csr_matrix, allowed: np.ndarray) -> np.ndarray:
    scores = np.array(scores, dtype=np.float32, copy=True)
    scores[seen.toarray() > 0] = -np.inf
    scores[:, ~allowed] = -np.inf
    return scores


def target_platform_training(
    vocab: Vocab, platform: str | None, config: ExperimentConfig
) -> tuple[np.ndarray | None, PlatformDropout | None]:
    """The VAE's reconstruction weights per item and its platform dropout when ``platform`` is
    a target: its items weigh 1, the others ``other_platform_weight``; the others are hidden
    from a ``platform_dropout`` share of each batch's persons. (None, None) without a target."""
    if platform not in vocab.platform_index:
        return None, None
    on_target = vocab.platform_mask(platform)
    weights = None
    if config.other_platform_weight != 1.0:
        weights = np.where(on_target, 1.0, config.other_platform_weight).astype(np.float32)
    hide = None
    if config.platform_dropout > 0:  # encoder indices: 0 pad, 1 unknown, then the vocabulary's + 2
        hide = PlatformDropout(
            vocab.platform_index[platform] + 2, np.r_[[True, True], on_target], config.platform_dropout
        )
    return weights, hide


def run(
    split: Split,
    items: pd.DataFrame | None,
    persons: pd.DataFrame | None,
    scratch: Path,
    config: ExperimentConfig | None = None,
    progress: bool = False,
    on_epoch: Any = None,
) -> ExperimentResult:
    config = config or ExperimentConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_pairs = interactions(split.train_events)
    vocab = Vocab.build(train_pairs, items, config.min_item_count)
    train_persons = pd.Index(sorted(split.train_events["person_id"].unique()))
    train_view = _View(scratch / "train_view", split.train_events, items, persons, config.sequence_length)
    cut = _cutoffs(split.train_events, split.valid).reindex(train_persons)
    sequences = train_view.sequences(pd.Series(train_persons), cut["at"].reset_index(drop=True))
    inputs = vocab.encode_sequences(sequences, config.sequence_length)
    bags = vocab.bag([list(s) for s in _item_sets(train_pairs, train_persons)])
    timings["features_seconds"] = time.perf_counter() - t0

    valid_persons = pd.Index(sorted(split.valid["person_id"].unique())).intersection(train_persons)
    valid_rows = train_persons.get_indexer(valid_persons)
    valid_targets = _relevant(split.valid[split.valid["person_id"].isin(valid_persons)], valid_persons, vocab)
    vae_config = VAEConfig(
        n_items=vocab.n_items,
        n_actions=10,
        n_platforms=len(vocab.platforms),
        d_model=config.d_model,
        d_latent=config.d_latent,
        d_hidden=config.d_hidden,
        n_layers=config.n_layers,
        input_dropout=config.input_dropout,
        d_bag=config.d_bag,
    )
    t1 = time.perf_counter()
    weights, hide = target_platform_training(vocab, split.target_platform, config)
    model, history = fit(
        vae_config, inputs, bags, valid_rows, valid_targets, config.train, progress, on_epoch, weights, hide
    )
    timings["vae_seconds"] = time.perf_counter() - t1

    # Base models on the training view.
    t2 = time.perf_counter()
    x_train = sp.csr_matrix(bags)
    popularity = baselines.popularity(x_train)
    # EASE (when the catalogue allows its dense inverse) and ItemKNN are fitted once: baselines
    # on the test, and the shipped item-item model (pruned EASE, else ItemKNN) is one of them.
    dense_ease = None
    if vocab.n_items <= baselines.EASE_MAX_ITEMS:
        t_fit = time.perf_counter()
        dense_ease = baselines.ease(x_train, config.ease_l2)
        timings["ease_seconds"] = time.perf_counter() - t_fit
    t_fit = time.perf_counter()
    item_knn = baselines.item_knn(x_train)
    timings["itemknn_seconds"] = time.perf_counter() - t_fit
    # The shipped item-item model: pruned EASE or ItemKNN, whichever ranks the validation items
    # better (pruning costs EASE more on some catalogues than ItemKNN's own sparsity).
    shipped = {"itemknn": item_knn}
    if dense_ease is not None:
        shipped["ease"] = baselines.prune(dense_ease)
    x_valid_bags = x_train[valid_rows]
    allowed_valid = vocab.platform_mask(split.target_platform)

    def valid_ndcg20(model: Any) -> float:
        scores = _mask(baselines.scores(x_valid_bags, model), x_valid_bags, allowed_valid)
        return float(ndcg_at_k(top_k(scores, 20), valid_targets, 20).mean())

    valid_ndcg = {name: valid_ndcg20(m) for name, m in shipped.items()}
    kind = max(valid_ndcg, key=lambda name: (valid_ndcg[name], name == "ease"))
    item_item = shipped[kind]
    _, mu, _ = infer(model, inputs)
    counts = np.asarray(x_train.sum(axis=0)).ravel()
    item_latent = np.asarray((x_train.T @ mu) / np.maximum(counts, 1)[:, None], dtype=np.float32)
    item_latent /= np.maximum(np.linalg.norm(item_latent, axis=1, keepdims=True), 1e-9)
    timings["base_models_seconds"] = time.perf_counter() - t2

    recommender = Recommender(
        model,
        vocab,
        item_item,
        popularity,
        item_latent,
        None,
        {
            "sequence_length": config.sequence_length,
            "n_candidates": config.n_candidates,
            "item_item_kind": kind,
            "time_known": split.time_known,
            "target_platform": split.target_platform,
        },
    )

    # Re-ranker on the validation items.
    t3 = time.perf_counter()
    valid_seq = [sequences[i] for i in valid_rows]
    valid_seen = [set(s) for s in np.array(_item_sets(train_pairs, train_persons), dtype=object)[valid_rows]]
    cands = recommender.candidates(valid_seq, valid_seen, split.target_platform)
    rng = np.random.default_rng(config.seed)
    # A fifth of the persons with a hit are held out for the re-ranker's early stopping and
    # calibration with all their candidates; the others' negatives are sampled.
    held = ranker.holdout_rows(cands.items, valid_targets, config.reranker.seed)
    rows, cols, labels = ranker.sample_pairs(
        cands.items, valid_targets, config.reranker.negatives_per_positive, rng, whole=held
    )
    x_valid = pair_features(
        recommender,
        train_view.store,
        cands,
        list(valid_persons),
        valid_seq,
        cut["at"].reindex(valid_persons).to_numpy(),
        rows,
        cols,
    )
    is_held = held[rows]
    sampled = int((labels[~is_held] == 0).sum())
    rate = sampled / max(1, ranker.available_negatives(cands.items, valid_targets, skip=held))
    held_rows = np.flatnonzero(held)
    booster, ranker_info = ranker.train(x_valid, labels, rows, config.reranker, rate, held_rows)
    recommender.booster = booster
    recommender.meta.update(ranker.scoring_meta(ranker_info))
    valid_p = ranker.probability(booster, x_valid, recommender.meta)
    # the F1 threshold on the held-out persons' whole lists: pairs the trees did not learn
    # from, at the base rate the re-ranker meets
    threshold = best_f1_threshold(labels[is_held], valid_p[is_held])
    recommender.meta["threshold"] = threshold
    timings["ranker_seconds"] = time.perf_counter() - t3
    alternatives = []  # the re-ranker with other seeds, untimed: only for measuring
    for seed in config.ranker_seeds:
        other, other_info = ranker.train(x_valid, labels, rows, replace(config.reranker, seed=seed), rate, held_rows)
        alternatives.append((other, ranker.scoring_meta(other_info)))

    # Test.
    t4 = time.perf_counter()
    test_view = _View(scratch / "test_view", split.test_events, items, persons, config.sequence_length)
    test_persons = pd.Index(sorted(split.test["person_id"].unique()))
    test_pairs = interactions(split.test_events)
    test_seen_sets = _item_sets(test_pairs, test_persons)
    test_cut = _cutoffs(split.test_events, split.test).reindex(test_persons)
    test_seq = test_view.sequences(pd.Series(test_persons), test_cut["at"].reset_index(drop=True))
    relevant = _relevant(split.test, test_persons, vocab)
    allowed = vocab.platform_mask(split.target_platform)
    seen = recommender.seen_matrix(test_seen_sets)

    ranked: dict[str, np.ndarray] = {}
    ranked["popularity"] = top_k(_mask(np.tile(popularity, (len(test_persons), 1)), seen, allowed), max(KS))
    x_test = seen.astype(np.float32)
    if dense_ease is not None:
        ranked["ease"] = top_k(_mask(baselines.scores(x_test, dense_ease), seen, allowed), max(KS))
        del dense_ease
    ranked["itemknn"] = top_k(_mask(baselines.scores(x_test, item_knn), seen, allowed), max(KS))
    test_inputs = vocab.encode_sequences(test_seq, config.sequence_length)
    logits, _, _ = infer(model, test_inputs)
    ranked["vae"] = top_k(_mask(logits, seen, allowed), max(KS))
    holdout = Holdout(
        list(test_persons),
        list(test_cut["at"]),
        test_seq,
        test_seen_sets,
        [sorted(split.test.loc[split.test["person_id"] == p, "item_id"]) for p in test_persons],
        split.target_platform,
        test_view.workdir.root,
    )
    evaluation = evaluate(recommender, holdout, test_view.store, alternatives)
    ranked["vae+ranker"] = evaluation.ranked
    timings["test_seconds"] = time.perf_counter() - t4

    metrics = {name: ranking_report(r, relevant, KS) for name, r in ranked.items()}
    classification = evaluation.classification
    curves = _curves(evaluation.labels, evaluation.probability)
    curves["ranker"] = ranker_info.pop("curves")
    curves["vae_history"] = history.epochs
    breakdown = _breakdown(ranked, relevant, split, test_persons)
    recommender.meta.update({"ranker": ranker_info, "vae_best_epoch": history.best_epoch})
    timings["total_seconds"] = time.perf_counter() - t0
    info = {
        **split.info,
        "items": vocab.n_items,
        "platforms": vocab.platforms,
        "item_item_kind": kind,
        "item_item_valid_ndcg20": {k: round(v, 4) for k, v in valid_ndcg.items()},
        "ranker": ranker_info,
        "threshold": threshold,
    }
    seeds = {config.reranker.seed: ranked["vae+ranker"]} | dict(
        zip(config.ranker_seeds, evaluation.alternatives, strict=True)
    )
    return ExperimentResult(
        recommender,
        metrics,
        breakdown,
        classification,
        curves,
        timings,
        info,
        history,
        holdout,
        ranked,
        relevant,
        seeds,
    )


def _curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    if len(np.unique(y)) < 2:
        return {}
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    step = max(1, len(fpr) // 500)
    return {
        "roc": {"fpr": fpr[::step].tolist(), "tpr": tpr[::step].tolist()},
        "pr": {"precision": precision[::step].tolist(), "recall": recall[::step].tolist()},
    }


def _breakdown(
    ranked: dict[str, np.ndarray], relevant: list[set[int]], split: Split, persons: pd.Index
) -> dict[str, Any]:
    """Metrics by the held-out item's platform, and for persons with at most 5 events on it."""
    out: dict[str, Any] = {}
    platform_of = split.test.groupby("person_id")["platform"].first().reindex(persons)
    for platform in sorted(platform_of.dropna().unique()):
        sel = (platform_of == platform).to_numpy()
        out[f"platform={platform}"] = {
            m: ranking_report(r[sel], [relevant[i] for i in np.flatnonzero(sel)], KS) for m, r in ranked.items()
        }
    sparse = sparse_persons(split, persons)
    if sparse.any():
        out["sparse(<=5 events on the platform)"] = {
            m: ranking_report(r[sparse], [relevant[i] for i in np.flatnonzero(sparse)], KS) for m, r in ranked.items()
        }
    return out


def events_on_platform(split: Split, persons: pd.Index) -> np.ndarray:
    """Per person: events (in the test view) on the held-out item's platform."""
    platform_of = split.test.groupby("person_id")["platform"].first().reindex(persons)
    on_platform = split.test_events.groupby(["person_id", "platform"]).size()
    return np.array([on_platform.get((p, pl), 0) for p, pl in zip(persons, platform_of, strict=True)], dtype=np.int64)


def sparse_persons(split: Split, persons: pd.Index, at_most: int = 5) -> np.ndarray:
    """Per person: at most ``at_most`` events (in the test view) on the held-out item's platform."""
    return events_on_platform(split, persons) <= at_most
