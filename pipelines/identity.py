"""Identity resolution and pseudonymisation.

Raw platform user ids never reach the lake: each ``(platform, user_id)`` becomes a keyed hash
(HMAC-SHA256 with the secret from ``XINTEREST_PSEUDONYM_KEY``). Identity links join such nodes;
the connected components of the link graph are persons, and a person's id is a keyed hash of
the smallest pseudonym in its component, so it is stable while the component keeps that node.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

PERSON_MAP_COLUMNS = ["platform", "user_id", "person_id"]


class Pseudonymiser:
    """Keyed hashing of raw ids; the same key always gives the same pseudonyms."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the pseudonymisation key is empty: set XINTEREST_PSEUDONYM_KEY")
        self._key = key.encode()

    def _digest(self, text: str, length: int) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:length]

    def user(self, platform: str, user_id: str) -> str:
        """Pseudonym of a platform's user id, e.g. ``u3f9c…``."""
        return "u" + self._digest(f"{platform}\x1f{user_id}", 24)

    def person(self, representative: str) -> str:
        return "p" + self._digest(f"person\x1f{representative}", 24)

    def users(self, platforms: pd.Series, user_ids: pd.Series) -> pd.Series:
        """Vectorised :meth:`user`: hashes each distinct pair once."""
        out = np.empty(len(platforms), dtype=object)
        platform_values = platforms.to_numpy()
        users = user_ids.to_numpy()
        for platform in pd.unique(platform_values):
            sel = platform_values == platform
            codes, uniques = pd.factorize(users[sel])
            hashed = np.array([self.user(platform, u) for u in uniques], dtype=object)
            out[sel] = hashed[codes]
        return pd.Series(out, index=platforms.index, dtype=object)


def resolve_persons(nodes: pd.DataFrame, links: pd.DataFrame, pseudonymiser: Pseudonymiser) -> pd.DataFrame:
    """Map every pseudonymised ``(platform, user_id)`` node to a ``person_id``.

    ``nodes`` has columns ``platform, user_id``; ``links`` has ``platform_a, user_id_a,
    platform_b, user_id_b`` (already pseudonymised). Nodes that only appear in links are
    included. Returns a frame with :data:`PERSON_MAP_COLUMNS`, one row per node.
    """
    left = links[["platform_a", "user_id_a"]].set_axis(["platform", "user_id"], axis=1)
    right = links[["platform_b", "user_id_b"]].set_axis(["platform", "user_id"], axis=1)
    all_nodes = (
        pd.concat([nodes[["platform", "user_id"]], left, right], ignore_index=True)
        .drop_duplicates()
        .reset_index(drop=True)
    )
    if all_nodes.empty:
        return pd.DataFrame(columns=PERSON_MAP_COLUMNS)
    index = pd.MultiIndex.from_frame(all_nodes)
    a = index.get_indexer(pd.MultiIndex.from_frame(left))
    b = index.get_indexer(pd.MultiIndex.from_frame(right))
    n = len(all_nodes)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # The representative is the smallest user pseudonym in the component: stable and keyed.
    frame = all_nodes.assign(component=component)
    smallest = frame.sort_values("user_id").drop_duplicates("component").set_index("component")["user_id"]
    person_of = pd.Series([pseudonymiser.person(rep) for rep in smallest.to_numpy()], index=smallest.index)
    frame["person_id"] = person_of.reindex(frame["component"]).to_numpy()
    return frame[PERSON_MAP_COLUMNS]
