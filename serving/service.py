"""The xinterest REST service (BentoML): recommendations, scores and feedback, port 3000.

The champion model and the feature store load once, in a background thread at start-up;
``/readyz`` says ready only when they are loaded. The service polls the registry and follows
the ``champion`` alias (promotion in the MLflow UI or by ``xinterest promote``), and every
response names the model version that produced it.

    bentoml serve serving.service:XInterest        # or: xinterest serve / make deploy
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import BaseModel, Field

from pipelines.contract import ACTIONS

log = logging.getLogger("xinterest.service")

Action = Literal[ACTIONS]  # type: ignore[valid-type]
PlatformName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="e.g. web, ios, douban_book")]


class Explanation(BaseModel):
    features: list[tuple[str, float]] = Field(
        description="Top TreeSHAP contributions of the re-ranker (feature, value)."
    )
    because_of: list[str] = Field(description="Past items the encoder's attention weighted most.")


class RecommendedItem(BaseModel):
    item_id: str
    platform: str
    score: float
    rank: int
    explanation: Explanation | None = None


class RecommendResponse(BaseModel):
    model_version: str
    person_id: str
    person_known: bool
    cold_start: Literal["cross_platform", "popularity"] | None
    items: list[RecommendedItem]


class ItemScore(BaseModel):
    item_id: str
    probability: float | None = Field(description="Interest probability; null for an item the model does not know.")


class ScoreResponse(BaseModel):
    model_version: str
    person_id: str
    person_known: bool
    scores: list[ItemScore]


class FeedbackEvent(BaseModel):
    platform: PlatformName
    user_id: Annotated[str, Field(min_length=1, max_length=256)]
    action: Action
    item_id: Annotated[str | None, Field(max_length=256)] = None
    value: float | None = None
    text: Annotated[str | None, Field(max_length=1000)] = None
    ts: datetime | None = Field(default=None, description="Event time (UTC if no offset); default: now.")
    event_id: Annotated[str | None, Field(max_length=128)] = None


class FeedbackResponse(BaseModel):
    model_version: str
    accepted: int
    durable: bool
    pushed: bool
    event_ids: list[str]


class InFlight:
    """The requests in flight in one worker, answered together: while a batch runs (on the
    model thread), the requests that arrive wait; when it ends, those waiting (up to
    ``limit``) go as the next batch.

    A batch's fixed cost (the VAE's and the booster's calls, one online read per view) is most
    of a lone request's, so batches should hold every request in flight. When a batch ends,
    the requests in flight were the batch's own (its clients send their next requests as soon
    as they have their answers, a fraction of a millisecond apart) and those that arrived while
    it ran; the next batch waits for that many, for at most ``window`` seconds. Expecting only
    the last batch's size would keep a worker's clients split in two halves that take turns,
    each paying the fixed cost. A client alone (nothing arrived during its batch) never waits,
    and when clients leave, one wait of ``window`` shrinks the expectation to the batch that
    came. The price is paid under traffic from many independent clients, whose answered
    requests need not be followed by new ones: a batch that follows one during which requests
    queued can wait up to ``window`` for requests that do not come. ``run`` answers a batch
    with one result (or exception) per request."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], limit: int = 8, window: float = 0.002) -> None:
        self._run = run
        self._limit = limit
        self._window = window
        self._expect = 1  # requests the next batch waits for: those in flight as the last one ended
        self._waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self._full: asyncio.Future[None] | None = None  # set when as many as expected are waiting
        self._draining = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def submit(self, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((request, future))
        if self._full is not None and not self._full.done() and len(self._waiting) >= self._expect:
            self._full.set_result(None)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _gathered(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until as many requests as were in flight when the last batch ended are waiting, or
        ``window`` has passed."""
        if len(self._waiting) >= min(self._expect, self._limit):
            return
        self._full = loop.create_future()
        try:
            await asyncio.wait_for(self._full, self._window)
        except TimeoutError:
            pass
        finally:
            self._full = None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await self._gathered(loop)
                batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
                try:
                    results = await loop.run_in_executor(self._thread, self._run, [r for r, _ in batch])
                except Exception as e:  # the whole batch failed: every request gets the error
                    results = [e] * len(batch)
                self._expect = len(batch) + len(self._waiting)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # cancelled (the request timed out)
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = False


def _response(engine: Any, result: Any) -> RecommendResponse:
    """The response to one ``/recommend``, built without validation (``model_construct``):
    the engine gives every value its declared type, and validating each answer's items again
    was a sizeable share of a request's CPU. Explanations (on request) are validated."""
    return RecommendResponse.model_construct(
        model_version=engine.model_version,
        person_id=result.person_id,
        person_known=result.person_known,
        cold_start=result.cold_start,
        items=[
            RecommendedItem.model_construct(
                item_id=i.item_id,
                platform=i.platform,
                score=i.score,
                rank=i.rank,
                explanation=Explanation(**i.explanation) if i.explanation else None,
            )
            for i in result.items
        ],
    )


def worker_count() -> int:
    """BentoML worker processes: ``XINTEREST_SERVING_WORKERS``, default one per core, at most four."""
    return int(os.environ.get("XINTEREST_SERVING_WORKERS", str(min(4, os.cpu_count() or 1))))


def _docs_app() -> Any:
    """``/docs``: the OpenAPI UI (BentoML serves it at ``/``, the spec at ``/docs.json``)."""
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    return Starlette(routes=[Route("/", lambda request: RedirectResponse("/", status_code=307))])


def _settings() -> Any:
    from pipelines.config import Workdir, get_settings

    settings = get_settings()
    return settings, Workdir.at(settings.workdir)


@bentoml.asgi_app(_docs_app(), path="/docs")
@bentoml.service(
    name="xinterest",
    http={"port": int(os.environ.get("XINTEREST_PORT", "3000"))},
    traffic={"timeout": 30, "max_concurrency": 256},
    # CPU-bound Python: one worker process per core (each request on one thread: torch and BLAS
    # limited to one, serving.loader.one_thread_per_request), at most four.
    workers=worker_count(),
    # Per-request costs that the hot path does not need by default (each is a sizeable share of
    # a ~3 ms request): an access-log line (XINTEREST_ACCESS_LOG=1 turns it on) and tracing
    # spans of /recommend and /score, which BentoML samples at rate 0 unless tracing is set up
    # (XINTEREST_TRACE_REQUESTS=1 traces them). Prometheus metrics stay on (/metrics).
    logging={"access": {"enabled": os.environ.get("XINTEREST_ACCESS_LOG", "0") == "1"}},
    tracing=({} if os.environ.get("XINTEREST_TRACE_REQUESTS") == "1" else {"excluded_urls": ["/recommend", "/score"]}),
)
class XInterest:
    def __init__(self) -> None:
        self.engine: Any = None
        self.error: str | None = None
        self.settings, self.workdir = _settings()
        self.poll_seconds = float(os.environ.get("XINTEREST_ALIAS_POLL_SECONDS", "10"))
        self._lock = threading.Lock()
        from serving.feedback import FeedbackLog

        self.feedback_log = FeedbackLog(self.workdir.feedback)
        # Load in the background (the loader then follows the champion alias), but give the first
        # attempt time to finish before this worker takes requests: with several workers, one
        # that answered /readyz must not leave another still loading behind the same port.
        self._in_flight = InFlight(self._recommend_batch)
        self._first_attempt = threading.Event()
        threading.Thread(target=self._load_and_follow, name="model-loader", daemon=True).start()
        self._first_attempt.wait(float(os.environ.get("XINTEREST_STARTUP_WAIT_SECONDS", "120")))

    def _load_and_follow(self) -> None:
        from serving.engine import ITEM_REFRESH_PAUSE
        from serving.loader import engine, one_thread_per_request, resolve_version, settle_heap
        from training import tracking

        one_thread_per_request()
        client = None
        while True:
            try:
                # Set up once, not per poll: setting up took ~6 ms, mostly Python competing for
                # the GIL with the batch running beside it, every poll (measured once; the
                # alias lookup itself took ~4 ms).
                if client is None:
                    tracking.setup(self.settings, self.workdir)
                    from mlflow import MlflowClient

                    client = MlflowClient()
                champion = str(resolve_version(client, None).version)
                if self.engine is None or self.engine.model_version != champion:
                    fresh = engine(self.settings, self.workdir, champion)
                    # Requests never read item stats (see the method); no pauses while no
                    # model is served yet.
                    fresh.refresh_item_stats(pause=0.0 if self.engine is None else ITEM_REFRESH_PAUSE)
                    with self._lock:
                        self.engine = fresh
                    settle_heap()  # no full collections over the loaded model while serving
                    log.info("serving xinterest-recommender v%s", champion)
                self.error = None
            except Exception as e:  # keep serving the loaded model; readiness reports the problem
                client = None  # set up again on the next attempt
                self.error = f"{type(e).__name__}: {e}"
                log.warning("model (re)load failed: %s", self.error)
            try:
                if self.engine is not None and self.engine.item_stats_due():
                    self.engine.refresh_item_stats()
            except Exception as e:  # the cached values stay; the next poll tries again
                log.warning("refreshing the item statistics failed: %s", e)
            self._first_attempt.set()
            time.sleep(self.poll_seconds)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    def _engine(self) -> Any:
        if self.engine is None:
            raise ServiceUnavailable(f"the model is not loaded yet{': ' + self.error if self.error else ''}")
        return self.engine

    def _person(self, engine: Any, person_id: str | None, platform: str | None, user_id: str | None) -> str:
        if person_id:
            if platform or user_id:
                raise InvalidArgument("give either person_id or platform + user_id, not both")
            return person_id
        if not platform or not user_id:
            raise InvalidArgument("a person is required: person_id, or platform and user_id")
        engine.check_platform(platform)
        return engine.person_of(platform, user_id)

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        person_id: Annotated[str | None, Field(max_length=128, description="Pseudonymised person id.")] = None,
        platform: Annotated[
            str | None, Field(max_length=32, description="The account's platform (with user_id).")
        ] = None,
        user_id: Annotated[str | None, Field(max_length=256, description="The account's id on that platform.")] = None,
        k: Annotated[int, Field(ge=1, le=200, description="Number of items.")] = 20,
        target_platform: Annotated[
            str | None, Field(max_length=32, description="Only this platform's items; default: the account's platform.")
        ] = None,
        exclude_seen: bool = True,
        explain: bool = False,
    ) -> RecommendResponse:
        """Top-k items for a person (by person_id or platform + user_id)."""
        self._engine()  # 503 at once while the model is not loaded
        request = (person_id, platform, user_id, k, target_platform, exclude_seen, explain, datetime.now(UTC))
        return await self._in_flight.submit(request)  # answered with the other requests in flight

    def _recommend_batch(self, requests: list[tuple[Any, ...]]) -> list[RecommendResponse | Exception]:
        """The responses to a batch of ``/recommend`` requests (on the model thread), each
        what the request alone gets; a request's own error is its entry."""
        from serving.engine import Ask, UnknownPlatform

        engine = self._engine()
        out: list[RecommendResponse | Exception | None] = [None] * len(requests)
        asks, where = [], []
        for i, (person_id, platform, user_id, k, target_platform, exclude_seen, explain, now) in enumerate(requests):
            try:
                person = self._person(engine, person_id, platform, user_id)
            except UnknownPlatform as e:
                out[i] = InvalidArgument(str(e))
                continue
            except InvalidArgument as e:
                out[i] = e
                continue
            asks.append(Ask(person, k, target_platform or (platform if user_id else None), exclude_seen, explain, now))
            where.append(i)
        for i, result in zip(where, engine.recommend_many(asks), strict=True):
            out[i] = InvalidArgument(str(result)) if isinstance(result, UnknownPlatform) else _response(engine, result)
        return cast(list[RecommendResponse | Exception], out)  # every entry is set above

    @bentoml.api(route="/score")
    def score(
        self,
        item_ids: Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=1000)],
        person_id: Annotated[str | None, Field(max_length=128)] = None,
        platform: Annotated[str | None, Field(max_length=32)] = None,
        user_id: Annotated[str | None, Field(max_length=256)] = None,
    ) -> ScoreResponse:
        """Interest probabilities of up to 1,000 items for a person."""
        from serving.engine import UnknownPlatform

        engine = self._engine()
        try:
            person = self._person(engine, person_id, platform, user_id)
        except UnknownPlatform as e:
            raise InvalidArgument(str(e)) from e
        known, probabilities = engine.score(person, item_ids, datetime.now(UTC))
        return ScoreResponse(
            model_version=engine.model_version,
            person_id=person,
            person_known=known,
            scores=[ItemScore(item_id=i, probability=p) for i, p in zip(item_ids, probabilities, strict=True)],
        )

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        event: FeedbackEvent | None = None,
        events: Annotated[list[FeedbackEvent] | None, Field(max_length=100)] = None,
    ) -> FeedbackResponse:
        """Record one event (``event``) or a small batch (``events``, up to 100): written durably
        before the response, then pushed to the online store."""
        import pandas as pd

        from pipelines.realtime import push_events

        engine = self._engine()
        batch = ([event] if event else []) + list(events or [])
        if not batch or (event and events):
            raise InvalidArgument("send exactly one of: event (an object) or events (a list of 1 to 100)")
        for i, e in enumerate(batch):
            if e.action != "search" and not e.item_id:
                raise InvalidArgument(f"events[{i}].item_id is required for action {e.action!r}")
            if e.action == "search" and not e.text:
                raise InvalidArgument(f"events[{i}].text is required for a search")
        written = self.feedback_log.append([e.model_dump() for e in batch])
        pushed = True
        try:
            frame = pd.DataFrame(written)
            frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
            frame["person_id"] = [
                engine.person_of(p, u) for p, u in zip(frame["platform"], frame["user_id"], strict=True)
            ]
            push_events(engine.store, engine.reader, frame, engine.recommender.sequence_length, engine.category_of)
        except Exception as e:  # the events are durable; the next retrain will still see them
            log.warning("feedback push to the online store failed: %s", e)
            pushed = False
        return FeedbackResponse(
            model_version=engine.model_version,
            accepted=len(written),
            durable=True,
            pushed=pushed,
            event_ids=[w["event_id"] for w in written],
        )


def _rebalancing() -> None:
    """Connections move off a worker that is busier than another (:mod:`serving.balance`);
    ``XINTEREST_REBALANCE=0`` turns it off (behind a load balancer that spreads requests)."""
    from serving.balance import Rebalance

    if os.environ.get("XINTEREST_REBALANCE", "1") != "0":
        XInterest.add_asgi_middleware(Rebalance, workers=worker_count())


_rebalancing()
