"""The ``/recommend`` response is built without validation (serving/service.py ``_response``):
it must be exactly the response that validation would build, in JSON."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

from serving.engine import Item, Recommendation
from serving.service import RecommendResponse, _response


def test_unvalidated_response_serialises_as_the_validated_one() -> None:
    explained = {"features": [["vae_rank", 0.25], ["cat_affinity", -0.5]], "because_of": ["w1", "w2"]}
    for result in (
        Recommendation("p1", True, None, [Item("w3", "web", 0.125, 1, explained), Item("a9", "ios", 0.0625, 2)]),
        Recommendation("p2", False, "popularity", [Item("m1", "miniapp", 0.5, 1)]),
        Recommendation("p3", True, "cross_platform", []),
    ):
        engine = SimpleNamespace(model_version="7")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydantic warns when a value does not fit its field
            built = _response(engine, result).model_dump_json()
        validated = RecommendResponse.model_validate(
            {
                "model_version": "7",
                "person_id": result.person_id,
                "person_known": result.person_known,
                "cold_start": result.cold_start,
                "items": [vars(i) for i in result.items],
            }
        ).model_dump_json()
        assert built == validated
