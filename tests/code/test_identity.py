from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.identity import Pseudonymiser, resolve_persons, resolve_persons_indexed


def test_transitive_links_across_three_platforms_make_one_person() -> None:
    p = Pseudonymiser("k")
    u = {name: p.user(platform, name) for platform, name in [("web", "ck1"), ("ios", "acct1"), ("miniapp", "o1")]}
    other = p.user("web", "ck2")
    nodes = pd.DataFrame(
        {"platform": ["web", "ios", "miniapp", "web"], "user_id": [u["ck1"], u["acct1"], u["o1"], other]}
    )
    # web~ios and ios~miniapp: web and miniapp are the same person only transitively
    links = pd.DataFrame(
        {
            "platform_a": ["web", "ios"],
            "user_id_a": [u["ck1"], u["acct1"]],
            "platform_b": ["ios", "miniapp"],
            "user_id_b": [u["acct1"], u["o1"]],
        }
    )
    persons = resolve_persons(nodes, links, p).set_index("user_id")["person_id"]
    assert persons[u["ck1"]] == persons[u["acct1"]] == persons[u["o1"]]
    assert persons[other] != persons[u["ck1"]]
    # the person id does not depend on the order links arrive in
    again = resolve_persons(nodes.iloc[::-1], links.iloc[::-1], p).set_index("user_id")["person_id"]
    assert again[u["o1"]] == persons[u["o1"]]


def test_pseudonyms_are_keyed_and_platform_scoped() -> None:
    a, b = Pseudonymiser("key-a"), Pseudonymiser("key-b")
    assert a.user("web", "42") == a.user("web", "42")
    assert a.user("web", "42") != b.user("web", "42")
    assert a.user("web", "42") != a.user("ios", "42")
    assert "42" not in a.user("web", "42")[1:]
    vectorised = a.users(pd.Series(["web", "ios", "web"]), pd.Series(["42", "42", "7"]))
    assert vectorised.tolist() == [a.user("web", "42"), a.user("ios", "42"), a.user("web", "7")]


def test_fast_hmac_is_hmac_sha256() -> None:
    for key in ["k", "x" * 64, "y" * 65, "z" * 300, "clé"]:
        pseudo = Pseudonymiser(key)
        for platform, user in [("web", "42"), ("ios", ""), ("miniapp", "é" * 50)]:
            text = f"{platform}\x1f{user}".encode()
            assert pseudo.user(platform, user) == "u" + hmac.new(key.encode(), text, hashlib.sha256).hexdigest()[:24]
        assert pseudo.user_array(pa.array(["web", None]), pa.array(["42", "7"])).to_pylist() == [
            pseudo.user("web", "42"),
            None,
        ]


def test_resolve_persons_indexed_points_at_each_node() -> None:
    p = Pseudonymiser("k")
    nodes = pd.DataFrame({"platform": ["web", "ios", "web", "web"], "user_id": ["a", "b", "a", "c"]})
    links = pd.DataFrame({"platform_a": ["web"], "user_id_a": ["a"], "platform_b": ["miniapp"], "user_id_b": ["z"]})
    persons, index = resolve_persons_indexed(nodes, links, p)
    person_of = dict(zip(persons["user_id"], persons["person_id"], strict=True))
    assert person_of["a"] == person_of["z"]  # linked across platforms
    assert len({person_of["a"], person_of["b"], person_of["c"]}) == 3
    assert persons[["platform", "user_id"]].to_numpy()[index].tolist() == nodes.to_numpy().tolist()
    assert persons["user_id"].tolist() == ["a", "b", "c", "z"]  # first appearance, then links
    # missing values take the general path and give the same frame
    with_missing = pd.concat([nodes, pd.DataFrame({"platform": ["web"], "user_id": [None]})], ignore_index=True)
    persons, index = resolve_persons_indexed(with_missing, links, p)
    assert len(persons) == 5 and index.tolist() == [0, 1, 0, 2, 3]


def test_one_person_id_and_many_agree() -> None:
    """Real-time pushes use :meth:`person`, batch ingest :meth:`persons`: same ids."""
    p = Pseudonymiser("k")
    reps = ["u1", "u2", "ufff"]
    assert p.persons(reps).to_pylist() == [p.person(r) for r in reps]
    text = b"person\x1fu1"
    assert p.person("u1") == "p" + hmac.new(b"k", text, hashlib.sha256).hexdigest()[:24]


def test_each_component_is_named_after_its_smallest_user_id() -> None:
    """The representative of a component is its smallest user id (string order), on a random
    graph whose ids vary in length and case, against pandas' sort and first row per component."""
    rng = np.random.default_rng(3)
    alphabet = list("abcXYZ019")
    users = ["".join(rng.choice(alphabet, int(rng.integers(1, 6)))) for _ in range(300)]
    nodes = pd.DataFrame({"platform": rng.choice(["web", "ios", "app"], 300), "user_id": users})
    nodes = nodes.drop_duplicates(ignore_index=True)
    a, b = rng.integers(0, len(nodes), 200), rng.integers(0, len(nodes), 200)
    links = pd.DataFrame(
        {
            "platform_a": nodes["platform"].to_numpy()[a],
            "user_id_a": nodes["user_id"].to_numpy()[a],
            "platform_b": nodes["platform"].to_numpy()[b],
            "user_id_b": nodes["user_id"].to_numpy()[b],
        }
    )
    pseudo = Pseudonymiser("k")
    persons = resolve_persons(nodes, links, pseudo)
    # the components, found again by walking the links
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(a, b, strict=True):
        parent[root(int(i))] = root(int(j))
    frame = nodes.assign(component=[root(i) for i in range(len(nodes))])
    smallest = frame.sort_values("user_id").drop_duplicates("component").set_index("component")["user_id"]
    want = [pseudo.person(smallest[c]) for c in frame["component"]]
    got = persons.set_index(["platform", "user_id"]).loc[
        list(zip(nodes["platform"], nodes["user_id"], strict=True)), "person_id"
    ]
    assert got.tolist() == want
    assert len(set(want)) < len(nodes)  # some components join several nodes
