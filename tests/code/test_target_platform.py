"""How an experiment with a target platform trains its VAE: the reconstruction weights and the
platform dropout built from the vocabulary, on encoder inputs as the features give them."""

from __future__ import annotations

import numpy as np

from training.data import Vocab
from training.experiment import ExperimentConfig, target_platform_training
from training.vae import PAD

VOCAB = Vocab(
    items=["b1", "b2", "m1", "m2", "m3"],
    platforms=["book", "music"],
    item_platform=["book", "book", "music", "music", "music"],
    item_category=[None] * 5,
)


def test_the_target_weighs_one_and_the_others_the_configured_weight() -> None:
    weights, _ = target_platform_training(VOCAB, "book", ExperimentConfig(other_platform_weight=0.25))
    assert weights is not None and weights.tolist() == [1.0, 1.0, 0.25, 0.25, 0.25]
    assert target_platform_training(VOCAB, "book", ExperimentConfig(other_platform_weight=1.0))[0] is None
    assert target_platform_training(VOCAB, None, ExperimentConfig()) == (None, None)
    assert target_platform_training(VOCAB, "film", ExperimentConfig()) == (None, None)  # no item to learn


def test_platform_dropout_keeps_exactly_the_targets_events_and_bag_items() -> None:
    row = {
        "seq_items": ["m1", "b1", "zz", "m2", "b2"],  # "zz": an item the vocabulary does not know
        "seq_actions": ["rate"] * 5,
        "seq_platforms": ["music", "book", "book", "music", "book"],
        "seq_gaps": [0.0] * 5,
        "seen_items": ["m1", "b1", "zz", "m2", "b2", "m3"],
    }
    inputs = VOCAB.encode_sequences([row], 8)
    _, hide = target_platform_training(VOCAB, "book", ExperimentConfig(platform_dropout=1.0))
    assert hide is not None
    out = hide.apply(inputs, np.random.default_rng(0))
    index = {item: VOCAB.item_index[item] + 2 for item in VOCAB.items}
    kept = [i for i in out["items"][0] if i != PAD]
    assert kept == [index["b1"], 1, index["b2"]]  # the books, the unknown book event included
    bag = [i for i in out["bag"][0] if i != PAD]
    assert bag == [index["b1"], 1, index["b2"]]  # unknown items stay: the bag branch drops them itself
