from __future__ import annotations

import pandas as pd

from pipelines.identity import Pseudonymiser, resolve_persons


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
