"""Identity resolution and pseudonymisation.

Raw platform user ids never reach the lake: each ``(platform, user_id)`` becomes a keyed hash
(HMAC-SHA256 with the secret from ``XINTEREST_PSEUDONYM_KEY``). Identity links join such nodes;
the connected components of the link graph are persons, and a person's id is a keyed hash of
the smallest pseudonym in its component, so it is stable while the component keeps that node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.contract import first_occurrences, prefixed_hex, string_buffers
from pipelines.native import Kernels, kernels

PERSON_MAP_COLUMNS = ["platform", "user_id", "person_id"]


_PERSON_BYTES = 12  # person ids: "p" + 24 hex characters


class Pseudonymiser:
    """Keyed hashing of raw ids; the same key always gives the same pseudonyms."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the pseudonymisation key is empty: set XINTEREST_PSEUDONYM_KEY")
        self._key = key.encode()
        # Many values at once go through the C kernel (pipelines/_native.c, hmac_sha256) when it
        # is built. In Python: HMAC-SHA256 (RFC 2104) with the keyed inner and outer states
        # computed once: per value, two copies and two updates instead of hmac.new's key
        # schedule and wrapper. Both give exactly hmac.new(key, text, sha256)'s digests
        # (tests/code/test_identity.py and test_fast_paths.py check them).
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(self._key).digest() if len(self._key) > block else self._key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded)).copy
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded)).copy
        # Pseudonyms already computed in Python (their digests), by ``platform\x1fuser_id``
        # bytes: identity links name the same users as the events. Bounded, so memory stays bounded.
        self._users: dict[bytes, bytes] = {}

    _REMEMBERED = 1 << 18  # at most some tens of MB
    _USER_BYTES = 12  # a user pseudonym is "u" and the hex of the first 12 bytes of its HMAC

    def _user_digest(self, key: bytes) -> bytes:
        digest = self._users.get(key)
        if digest is None:
            digest = self._mac(key)[: self._USER_BYTES]
            if len(self._users) < self._REMEMBERED:
                self._users[key] = digest
        return digest

    def _user_pseudonym(self, key: bytes) -> str:
        return "u" + self._user_digest(key).hex()

    def _user_pseudonyms(self, keys: Iterable[bytes]) -> pa.Array:
        """:meth:`_user_pseudonym` of many keys, as Arrow strings (written all at once)."""
        digest = self._user_digest
        digests = bytearray()
        for key in keys:
            digests += digest(key)
        return prefixed_hex(b"u", digests, self._USER_BYTES)

    def _mac(self, data: bytes) -> bytes:
        inner = self._inner()
        inner.update(data)
        outer = self._outer()
        outer.update(inner.digest())
        return outer.digest()

    def _native_pseudonyms(self, native: Kernels, prefix: bytes, texts: pa.Array, mark: bytes, width: int) -> pa.Array:
        """``mark`` and the hex of the first ``width`` bytes of HMAC(key, ``prefix`` + text),
        for each text, in C."""
        data, offsets = string_buffers(texts)
        return prefixed_hex(mark, native.hmac_sha256(self._key, prefix, data, offsets, width), width)

    def user(self, platform: str, user_id: str) -> str:
        """Pseudonym of a platform's user id, e.g. ``u3f9c…``."""
        return self._user_pseudonym(f"{platform}\x1f{user_id}".encode())

    def person(self, representative: str) -> str:
        """Person id of a component's representative node, e.g. ``p3f9c…`` (what :meth:`persons`
        gives in bulk: batch ingest and real-time pushes must agree)."""
        return "p" + self._person_digest(representative).hex()

    def _person_digest(self, representative: str) -> bytes:
        return self._mac(f"person\x1f{representative}".encode())[:_PERSON_BYTES]

    def persons(self, representatives: Iterable[str]) -> pa.Array:
        """Person ids of many representatives, as Arrow strings (written all at once)."""
        representatives = list(representatives)
        native = kernels()
        if native is not None and all(isinstance(r, str) for r in representatives):
            return self._native_pseudonyms(
                native, b"person\x1f", pa.array(representatives, pa.string()), b"p", _PERSON_BYTES
            )
        digest = self._person_digest
        digests = bytearray()
        for representative in representatives:
            digests += digest(representative)
        return prefixed_hex(b"p", digests, _PERSON_BYTES)

    def users(self, platforms: pd.Series, user_ids: pd.Series) -> pd.Series:
        """Vectorised :meth:`user` of string columns (through :meth:`user_array`)."""
        column = self.user_array(
            pa.array(platforms.to_numpy(), pa.string()), pa.array(user_ids.to_numpy(), pa.string())
        )
        return pd.Series(column.to_numpy(zero_copy_only=False), index=platforms.index, dtype=object)

    def user_array(self, platforms: pa.Array | pa.ChunkedArray | str, user_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Arrow form of :meth:`users` (``platforms`` may be one name for every row): the
        pseudonym where both platform and user id are present, null elsewhere."""
        return self.user_dictionary(platforms, user_ids).cast(pa.string())

    def user_dictionary(
        self, platforms: pa.Array | pa.ChunkedArray | str, user_ids: pa.Array | pa.ChunkedArray
    ) -> pa.DictionaryArray:
        """:meth:`user_array`, dictionary-encoded: each distinct ``platform\x1fuser_id`` key is
        hashed once, and rows hold an index into the pseudonyms (cheap to group and to move)."""
        if isinstance(platforms, str):
            platforms = pa.scalar(platforms, pa.string())
        keys = pc.binary_join_element_wise(platforms, user_ids, "\x1f")
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        encoded = pc.dictionary_encode(keys)
        native = kernels()
        if native is not None:  # in C, without the GIL: no need to remember pseudonyms
            pseudonyms = self._native_pseudonyms(native, b"", encoded.dictionary, b"u", self._USER_BYTES)
        else:
            distinct = encoded.dictionary.cast(pa.binary()).to_numpy(zero_copy_only=False)
            pseudonyms = self._user_pseudonyms(distinct)
        return pa.DictionaryArray.from_arrays(encoded.indices, pseudonyms)


def resolve_persons(nodes: pd.DataFrame, links: pd.DataFrame, pseudonymiser: Pseudonymiser) -> pd.DataFrame:
    """Map every pseudonymised ``(platform, user_id)`` node to a ``person_id``.

    ``nodes`` has columns ``platform, user_id``; ``links`` has ``platform_a, user_id_a,
    platform_b, user_id_b`` (already pseudonymised). Nodes that only appear in links are
    included. Returns a frame with :data:`PERSON_MAP_COLUMNS`, one row per node.
    """
    return resolve_persons_indexed(nodes, links, pseudonymiser)[0]


def resolve_persons_indexed(
    nodes: pd.DataFrame, links: pd.DataFrame, pseudonymiser: Pseudonymiser
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`resolve_persons`, plus for each row of ``nodes`` the row of the result that
    holds it (so callers find each node's person without looking it up again).

    The result lists nodes in order of first appearance in ``nodes``, then in the links.
    """
    left = links[["platform_a", "user_id_a"]].set_axis(["platform", "user_id"], axis=1)
    right = links[["platform_b", "user_id_b"]].set_axis(["platform", "user_id"], axis=1)
    every = pd.concat([nodes[["platform", "user_id"]], left, right], ignore_index=True)
    if every.empty:
        return pd.DataFrame(columns=PERSON_MAP_COLUMNS), np.zeros(0, dtype=np.int64)
    if every.isna().any().any():
        return _resolve_with_index(every, len(nodes), len(links), pseudonymiser)
    # One integer per distinct (platform, user_id), numbered by first appearance (as
    # drop_duplicates keeps them), instead of hashing pairs of strings in a MultiIndex.
    platform_codes, platforms = pd.factorize(every["platform"].to_numpy(dtype=object))
    user_codes, _ = pd.factorize(every["user_id"].to_numpy(dtype=object))
    node_of, _ = pd.factorize(user_codes.astype(np.int64) * max(len(platforms), 1) + platform_codes)
    first = np.flatnonzero(first_occurrences(node_of, int(node_of.max()) + 1))
    all_nodes = every.iloc[first].reset_index(drop=True)
    k, m = len(nodes), len(links)
    return _components(all_nodes, node_of[k : k + m], node_of[k + m :], pseudonymiser), node_of[:k]


def _resolve_with_index(
    every: pd.DataFrame, k: int, m: int, pseudonymiser: Pseudonymiser
) -> tuple[pd.DataFrame, np.ndarray]:
    """The general path (missing values among the nodes): pandas matches pairs of values."""
    all_nodes = every.drop_duplicates().reset_index(drop=True)
    index = pd.MultiIndex.from_frame(all_nodes)
    node_of = index.get_indexer(pd.MultiIndex.from_frame(every))
    return _components(all_nodes, node_of[k : k + m], node_of[k + m :], pseudonymiser), node_of[:k]


def _components(all_nodes: pd.DataFrame, a: np.ndarray, b: np.ndarray, pseudonymiser: Pseudonymiser) -> pd.DataFrame:
    """Persons: connected components of the nodes linked by edges ``a[i]``-``b[i]``."""
    n = len(all_nodes)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    n_components, component = connected_components(graph, directed=False)
    # The representative is the smallest user pseudonym in the component: stable and keyed.
    # The nodes in ascending order of their strings (UTF-8 bytes order as code points do; a
    # missing id last, as pandas sorts it); the first of each component in that order is its
    # smallest. The representative keeps its own object (a missing one stays None or NaN).
    names = all_nodes["user_id"].to_numpy(dtype=object)
    order = pc.sort_indices(pa.array(names, pa.string(), from_pandas=True)).to_numpy()
    components, first = np.unique(component[order], return_index=True)
    representative = np.empty(n_components, dtype=object)
    representative[components] = names[order[first]]
    person = pseudonymiser.persons(representative).to_numpy(zero_copy_only=False)
    frame = all_nodes.assign(person_id=person[component])
    return frame[PERSON_MAP_COLUMNS]
