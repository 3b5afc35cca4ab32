"""Behaviour of a trained model on seeded synthetic data with known ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.identity import Pseudonymiser
from pipelines.lake import Lake
from serving.loader import load
from training.trainer import infer

pytestmark = pytest.mark.slow


def _interest_mass(
    top_items: np.ndarray, item_category: np.ndarray, interest: np.ndarray, categories: list[str]
) -> float:
    """Expected true interest of a list: sum over its items of the person's interest in the item's category."""
    index = {c: i for i, c in enumerate(categories)}
    cats = [index.get(item_category[j]) for j in top_items]
    return float(np.mean([interest[c] if c is not None else 0.0 for c in cats]))


def test_the_vae_recovers_ground_truth_interests_better_than_popularity(trained: tuple) -> None:
    settings, workdir, outcome, raw = trained
    truth = pd.read_parquet(raw / "truth" / "persons.parquet")
    categories = pd.read_json(raw / "truth" / "categories.json", typ="series").tolist()
    pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
    persons = Lake(workdir.lake).table("persons").set_index(["platform", "user_id"])["person_id"]
    # the lake's person of each true person, through their web cookie (the most used platform)
    truth["person_id"] = [persons.get(("web", pseudo.user("web", c))) for c in truth["cookie"]]
    truth = truth.dropna(subset=["person_id"])
    sequences = pd.read_parquet(workdir.feature_data / "person_sequence.parquet")
    latest = sequences.sort_values("event_timestamp").groupby("person_id").tail(1).set_index("person_id")
    truth = truth[truth["person_id"].isin(latest.index)].head(400)
    rec = load(settings, workdir).recommender
    rows = [dict(latest.loc[p, ["seq_items", "seq_actions", "seq_platforms", "seq_gaps"]]) for p in truth["person_id"]]
    logits, _, _ = infer(rec.vae, rec.vocab.encode_sequences(rows, rec.sequence_length))
    web = rec.vocab.platform_mask("web")
    logits[:, ~web] = -np.inf
    popular = np.argsort(-np.where(web, rec.popularity, -np.inf))[:20]
    vae_mass, pop_mass = [], []
    for i, interest in enumerate(truth["interest_end"]):
        interest = np.asarray(interest)
        vae_mass.append(_interest_mass(np.argsort(-logits[i])[:20], rec.item_category, interest, categories))
        pop_mass.append(_interest_mass(popular, rec.item_category, interest, categories))
    # Paired over the same persons: clearly better (t > 4), by a margin that is not noise.
    # (A list blind to the person scores 1/20 = 0.05 on average: popularity does.)
    diff = np.asarray(vae_mass) - np.asarray(pop_mass)
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    assert diff.mean() > 0.015 and t > 4, (np.mean(vae_mass), np.mean(pop_mass), t)


def test_recommendations_follow_a_change_of_interest_direction(trained: tuple) -> None:
    """Invariance/direction test: adding recent events of one category raises that category's share."""
    settings, workdir, _, _ = trained
    rec = load(settings, workdir).recommender
    web_items = [i for i, p in zip(rec.vocab.items, rec.vocab.item_platform, strict=True) if p == "web"]
    category_of = dict(zip(rec.vocab.items, rec.item_category, strict=True))
    books = [i for i in web_items if category_of[i] == "books"][:10]
    games = [i for i in web_items if category_of[i] == "games"][:10]
    base = {"seq_items": books, "seq_actions": ["view"] * 10, "seq_platforms": ["web"] * 10, "seq_gaps": [86400.0] * 10}
    shifted = {
        **base,
        "seq_items": books + games,
        "seq_actions": ["view"] * 20,
        "seq_platforms": ["web"] * 20,
        "seq_gaps": [86400.0] * 10 + [60.0] * 10,
    }
    logits, _, _ = infer(rec.vae, rec.vocab.encode_sequences([base, shifted], rec.sequence_length))
    share = [np.mean([category_of[rec.vocab.items[j]] == "games" for j in np.argsort(-row)[:20]]) for row in logits]
    assert share[1] > share[0] + 0.2


def test_alternative_re_rankers_are_scored_as_the_model_itself(trained: tuple) -> None:
    """``evaluate``'s alternatives (the quality benchmark's other re-ranker seeds) re-rank the
    same candidates from the same features: the model's own booster gives its own figures, and
    a booster without the stacking prior others."""
    from training.gate import holdout_dir
    from training.holdout import Holdout, evaluate

    settings, workdir, outcome, _ = trained
    rec = load(settings, workdir).recommender
    holdout = Holdout.load(holdout_dir(workdir, outcome.versions["recommender"]))
    no_prior = {k: v for k, v in rec.meta.items() if k != "prior"}
    result = evaluate(rec, holdout, alternatives=[(rec.booster, rec.meta), (rec.booster, no_prior)])
    assert np.array_equal(result.alternatives[0], result.ranked)
    assert not np.array_equal(result.alternatives[1], result.ranked)
