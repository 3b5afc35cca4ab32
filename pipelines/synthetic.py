"""A seeded generator of realistic multi-platform raw logs, with ground truth.

Persons have latent interests over item categories that drift over the period. They use up
to four platforms, each logging in its own raw format:

- ``web/clickstream-*.jsonl`` — JSON lines: millisecond epochs (``ts_ms``), cookie ids,
  short action codes (``pv``, ``clk``, ``atc`` …), an event id (``eid``) that the collector
  re-sends now and then (at-least-once delivery), dwell seconds;
- ``app/events.csv`` — iOS and Android app events: local-time ISO strings with an IANA
  timezone column, account ids, long action names, quantities; no event id;
- ``miniapp/events.tsv`` — a mini-program table: second epochs, its own open ids, numeric
  action types; no event id;
- ``catalog.csv`` — the item catalog of every platform (canonical items);
- ``links/logins.csv`` — partial identity links (logins, phone binding).

The logs are messy on purpose: duplicated events, malformed rows, missing fields, unknown
action codes, a few bot users, clock skew. ``truth/`` holds what really happened: each
person's interests at the start and end of the period, which raw ids belong to whom, the bots,
and ``expected_report.json`` with the exact number of rows the ingest must accept, quarantine
(by reason) and drop as duplicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

log = logging.getLogger(__name__)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "books": ("novel", "poetry", "biography"),
    "music": ("vinyl", "headphones", "guitar"),
    "sports": ("running", "yoga", "fitness"),
    "outdoor": ("camping", "hiking", "tent"),
    "electronics": ("laptop", "camera", "monitor"),
    "phones": ("smartphone", "charger", "case"),
    "fashion": ("dress", "jacket", "jeans"),
    "shoes": ("sneakers", "boots", "sandals"),
    "beauty": ("lipstick", "skincare", "perfume"),
    "home": ("sofa", "lamp", "curtain"),
    "kitchen": ("knife", "blender", "cookware"),
    "toys": ("lego", "puzzle", "doll"),
    "baby": ("stroller", "diaper", "crib"),
    "pets": ("catfood", "leash", "aquarium"),
    "garden": ("seeds", "shovel", "planter"),
    "games": ("console", "boardgame", "controller"),
    "movies": ("bluray", "documentary", "anime"),
    "travel": ("suitcase", "backpack", "pillow"),
    "food": ("coffee", "tea", "chocolate"),
    "health": ("vitamins", "massager", "thermometer"),
}
TITLE_NOUNS = ("classic", "pro", "lite", "deluxe", "mini", "max", "eco", "smart")

# Raw action vocabularies of each platform, and their canonical meaning.
WEB_ACTIONS = {
    "pv": "view",
    "clk": "click",
    "lk": "like",
    "fav": "favorite",
    "cmt": "comment",
    "shr": "share",
    "srch": "search",
    "atc": "cart",
    "buy": "purchase",
}
APP_ACTIONS = {
    "view_item": "view",
    "click_item": "click",
    "like": "like",
    "add_favorite": "favorite",
    "comment": "comment",
    "share": "share",
    "search": "search",
    "add_to_cart": "cart",
    "purchase": "purchase",
}
MINIAPP_ACTIONS = {
    1: "view",
    2: "click",
    3: "like",
    4: "favorite",
    5: "share",
    6: "search",
    7: "cart",
    8: "purchase",
    9: "comment",
}
CANONICAL_ACTIONS = ("view", "click", "like", "favorite", "comment", "share", "search", "cart", "purchase")
ACTION_WEIGHTS = np.array([0.50, 0.20, 0.05, 0.05, 0.02, 0.02, 0.06, 0.06, 0.04])
PLATFORMS = ("web", "ios", "android", "miniapp")
TIMEZONES = ("Asia/Shanghai", "America/New_York", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata")
TIMEZONE_WEIGHTS = np.array([0.5, 0.15, 0.15, 0.1, 0.1])


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and messiness of a synthetic dataset; every figure is reproducible from ``seed``."""

    n_events: int = 200_000
    events_per_person: float = 40.0
    items_per_category: int = 40
    start: str = "2024-01-01"
    days: int = 60
    seed: int = 0
    drifting_share: float = 0.5  # persons whose interests move towards a second profile
    malformed_rate: float = 0.001
    duplicate_rate: float = 0.01
    missing_rate: float = 0.001
    future_clock_rate: float = 0.0005
    n_bots: int | None = None  # default: 2 + one per 200k events
    bot_events: int = 1_500
    link_share: float = 0.6  # share of multi-platform persons with a login link per platform pair
    shard_rows: int = 1_000_000  # rows per web JSONL shard

    @property
    def n_persons(self) -> int:
        return max(20, int(self.n_events / self.events_per_person))

    @property
    def bots(self) -> int:
        return self.n_bots if self.n_bots is not None else 2 + self.n_events // 200_000


@dataclass
class _Counts:
    read: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)

    def quarantine(self, reason: str, n: int) -> None:
        if n:
            self.quarantined[reason] = self.quarantined.get(reason, 0) + n


def generate(out_dir: Path | str, config: SyntheticConfig | None = None, progress: bool = False) -> Path:
    """Write a synthetic raw-log dataset to ``out_dir`` and return it."""
    config = config or SyntheticConfig()
    out = Path(out_dir)
    for sub in ("web", "app", "miniapp", "links", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    counts = _Counts()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("generating synthetic logs", total=6)
        catalog = _catalog(config, rng)
        catalog.to_csv(out / "catalog.csv", index=False)
        persons = _persons(config, rng)
        bar.advance(task)
        events = _events(config, persons, catalog, rng)
        bar.advance(task)
        _write_web(out, events[events["platform"] == "web"], persons, config, rng, counts)
        bar.advance(task)
        _write_app(out, events[events["platform"].isin(["ios", "android"])], persons, config, rng, counts)
        bar.advance(task)
        _write_miniapp(out, events[events["platform"] == "miniapp"], persons, config, rng, counts)
        bar.advance(task)
        links = _links(persons, config, rng)
        links.to_csv(out / "links" / "logins.csv", index=False)
        _write_truth(out, persons, config, counts)
        bar.advance(task)
    log.info("synthetic logs: %d raw rows in %s", counts.read, out)
    return out


def _catalog(config: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    names = list(CATEGORIES)
    for prefix, platforms in (("w", ("web",)), ("a", ("ios", "android")), ("g", ("miniapp",))):
        n = 0
        for category in names:
            keywords = CATEGORIES[category]
            for _ in range(config.items_per_category):
                kw = keywords[rng.integers(len(keywords))]
                noun = TITLE_NOUNS[rng.integers(len(TITLE_NOUNS))]
                tags = "|".join(sorted({kw, keywords[rng.integers(len(keywords))]}))
                for platform in platforms:
                    rows.append((f"{prefix}{n}", platform, category, f"{kw.title()} {noun} {n}", tags))
                n += 1
    return pd.DataFrame(rows, columns=["item_id", "platform", "category", "title", "tags"])


def _persons(config: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = config.n_persons
    k = len(CATEGORIES)
    start_interest = rng.dirichlet(np.full(k, 0.15), size=n)
    end_interest = rng.dirichlet(np.full(k, 0.15), size=n)
    drift = np.where(rng.random(n) < config.drifting_share, rng.uniform(0.5, 1.0, n), 0.0)
    # Which platforms each person uses, and how much.
    uses = rng.random((n, 4)) < np.array([0.7, 0.35, 0.35, 0.45])
    uses[~uses.any(axis=1), 0] = True
    weights = uses * rng.gamma(2.0, 1.0, size=(n, 4))
    activity = rng.lognormal(0.0, 0.8, n)
    ids = np.arange(n)
    persons = pd.DataFrame(
        {
            "person": ids,
            "cookie": [f"ck{v:010x}" for v in rng.integers(0, 2**40, n)],
            "account": [f"acct_{v}" for v in rng.permutation(n) + 100_000],
            "openid": [f"o{v:019x}" for v in rng.integers(0, 2**63, n)],
            "timezone": rng.choice(TIMEZONES, size=n, p=TIMEZONE_WEIGHTS),
            "clock_skew_s": np.where(rng.random(n) < 0.05, rng.integers(-300, 300, n), 0),
            "activity": activity,
            "drift": drift,
        }
    )
    persons["platform_weights"] = list(weights)
    persons["interest_start"] = list(start_interest)
    persons["interest_end"] = list(end_interest)
    return persons


def _events(
    config: SyntheticConfig, persons: pd.DataFrame, catalog: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """Clean events as (person, platform, item, action, utc ts, text, value); unique by content."""
    n_persons = len(persons)
    rate = persons["activity"].to_numpy()
    per_person = rng.multinomial(config.n_events, rate / rate.sum())
    person = np.repeat(np.arange(n_persons), per_person)
    n = len(person)
    period_s = config.days * 86_400
    # Sessions: events come in bursts of about five, a minute or so apart.
    session_len = 5
    session_start = rng.uniform(0, period_s - 3_600, size=n // session_len + 1)
    t = session_start[np.arange(n) // session_len] + rng.exponential(60.0, n).cumsum() % 1_800
    order = np.lexsort((t, person))
    person, t = person[order], t[order]
    # One platform per session.
    weights = np.stack(persons["platform_weights"].to_numpy())
    cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    session_id = np.arange(n) // session_len
    u = rng.random(session_id.max() + 1)[session_id]
    platform_idx = np.minimum((u[:, None] > cum[person]).sum(axis=1), 3)
    # Category from the person's interest at that time.
    frac = t / period_s
    drift = persons["drift"].to_numpy()[person] * frac
    start_i = np.stack(persons["interest_start"].to_numpy()).astype(np.float32)
    end_i = np.stack(persons["interest_end"].to_numpy()).astype(np.float32)
    category = np.empty(n, dtype=np.int64)
    chunk = 500_000
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        p = person[lo:hi]
        w = drift[lo:hi, None].astype(np.float32)
        theta = (1 - w) * start_i[p] + w * end_i[p]
        c = np.cumsum(theta, axis=1)
        category[lo:hi] = np.minimum((rng.random(hi - lo)[:, None] * c[:, -1:] > c).sum(axis=1), c.shape[1] - 1)
    action = rng.choice(len(CANONICAL_ACTIONS), size=n, p=ACTION_WEIGHTS)
    # Item: within the platform's catalog and the category, Zipf-like popularity.
    item = np.empty(n, dtype=object)
    names = list(CATEGORIES)
    for pi, platform in enumerate(PLATFORMS):
        items = catalog[(catalog["platform"] == platform)]
        for ci, cname in enumerate(names):
            sel = np.flatnonzero((platform_idx == pi) & (category == ci))
            if not len(sel):
                continue
            pool = items.loc[items["category"] == cname, "item_id"].to_numpy()
            pop = 1.0 / np.arange(1, len(pool) + 1) ** 0.8
            item[sel] = pool[rng.choice(len(pool), size=len(sel), p=pop / pop.sum())]
    is_search = action == CANONICAL_ACTIONS.index("search")
    keyword_idx = rng.integers(0, 3, n)
    text = np.full(n, None, dtype=object)
    modifiers = np.array(["", "cheap ", "best ", "new "], dtype=object)
    mod = modifiers[rng.integers(0, 4, n)]
    for ci, cname in enumerate(names):
        sel = np.flatnonzero(is_search & (category == ci))
        kws = np.array(CATEGORIES[cname], dtype=object)
        text[sel] = mod[sel] + kws[keyword_idx[sel]]
    item[is_search] = None
    value = np.full(n, np.nan)
    is_view = action == 0
    value[is_view] = np.round(rng.exponential(30.0, is_view.sum()), 1)
    buys = np.isin(action, [CANONICAL_ACTIONS.index("cart"), CANONICAL_ACTIONS.index("purchase")])
    value[buys] = rng.integers(1, 4, buys.sum())
    start = pd.Timestamp(config.start, tz="UTC")
    ts_ms = start.value // 1_000_000 + (t * 1000).astype(np.int64)
    events = pd.DataFrame(
        {
            "person": person,
            "platform": np.array(PLATFORMS, dtype=object)[platform_idx],
            "item": item,
            "action": np.array(CANONICAL_ACTIONS, dtype=object)[action],
            "category": np.array(names, dtype=object)[category],
            "text": text,
            "value": value,
            "ts_ms": ts_ms,
        }
    )
    # Events identical to the second would be indistinguishable from duplicates in sources
    # without an event id; drop such natural collisions so that every duplicate is injected.
    events["ts_s"] = events["ts_ms"] // 1000
    events = events.drop_duplicates(["person", "platform", "item", "action", "text", "ts_s"])
    return events.reset_index(drop=True)


Fault = tuple[str, float, "Callable[[pd.DataFrame], pd.DataFrame]", "Callable[[pd.DataFrame], np.ndarray] | None"]


def _inject(
    frame: pd.DataFrame,
    faults: list[Fault],
    config: SyntheticConfig,
    rng: np.random.Generator,
    counts: _Counts,
    protected: int = 0,
) -> pd.DataFrame:
    """Break distinct clean rows (one fault each), append re-sent duplicates, shuffle.

    Rows from position ``protected`` on (bots) are left intact. Each fault is
    ``(reason, rate, mutate, eligible)``; ``mutate`` returns the broken rows, ``eligible``
    selects the rows the fault can apply to. Malformed rows are broken at write time
    (see ``_fault`` column). Counts of every fault and duplicate go to ``counts``.
    """
    n = len(frame) - protected
    frame = frame.copy()
    frame["_fault"] = None
    free = np.ones(len(frame), dtype=bool)
    free[n:] = False
    for reason, rate, mutate, eligible in faults:
        ok = free.copy()
        if eligible is not None:
            ok &= eligible(frame)
        pool = np.flatnonzero(ok)
        k = min(len(pool), int(round(n * rate)))
        picked = np.sort(rng.choice(pool, size=k, replace=False))
        if k:
            broken = mutate(frame.loc[picked].copy())
            for column in broken.columns:
                frame.loc[picked, column] = broken[column]
            frame.loc[picked, "_fault"] = reason
        free[picked] = False
        counts.quarantine(reason, k)
    dup_pool = np.flatnonzero(free)
    k = min(len(dup_pool), int(round(n * config.duplicate_rate)))
    copies = np.sort(rng.choice(dup_pool, size=k, replace=False))
    counts.duplicates += k
    frame = pd.concat([frame, frame.iloc[copies]], ignore_index=True)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    counts.read += len(frame)
    return frame


def _malformed_lines(lines: list[str], faults: pd.Series, offset: int, cut: str) -> list[str]:
    """Break the text lines of rows marked ``malformed_row``: a truncated write or a short row."""
    for i in np.flatnonzero((faults == "malformed_row").to_numpy()):
        line = lines[i + offset]
        lines[i + offset] = line[: len(line) // 2] if cut == "half" else cut.join(line.split(cut)[:2])
    return lines


def _set(column: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(rows: pd.DataFrame) -> pd.DataFrame:
        rows[column] = value
        return rows

    return mutate


def _malformed(rows: pd.DataFrame) -> pd.DataFrame:
    return rows  # broken as text when written


def _write_web(
    out: Path,
    events: pd.DataFrame,
    persons: pd.DataFrame,
    config: SyntheticConfig,
    rng: np.random.Generator,
    counts: _Counts,
) -> None:
    codes = {v: k for k, v in WEB_ACTIONS.items()}
    n = len(events)
    frame = pd.DataFrame(
        {
            "eid": [f"e{v:016x}" for v in rng.integers(0, 2**63, n)],
            "ts_ms": events["ts_ms"].to_numpy(),
            "cookie": persons["cookie"].to_numpy()[events["person"].to_numpy()],
            "act": events["action"].map(codes).to_numpy(),
            "sku": events["item"].to_numpy(),
            "q": events["text"].to_numpy(),
            "dwell": np.where(events["action"].to_numpy() == "view", events["value"].to_numpy(), np.nan),
            "ua": rng.choice(["Mozilla/5.0 (Windows NT 10.0)", "Mozilla/5.0 (Macintosh)", "Mozilla/5.0 (X11)"], n),
        }
    )
    bots = _bots(config, rng)
    counts.quarantine("bot_suspected", len(bots))
    frame = pd.concat([frame, bots], ignore_index=True)
    faults: list[Fault] = [
        ("missing_user_id", config.missing_rate, _set("cookie", None), None),
        ("unknown_action", config.missing_rate, _set("act", "zz"), None),
        ("malformed_row", config.malformed_rate, _malformed, None),
    ]
    frame = _inject(frame, faults, config, rng, counts, protected=len(bots))
    shards = max(1, int(np.ceil(len(frame) / config.shard_rows)))
    for s in range(shards):
        part = frame.iloc[s * config.shard_rows : (s + 1) * config.shard_rows]
        lines = part.drop(columns="_fault").to_json(orient="records", lines=True).splitlines()
        lines = _malformed_lines(lines, part["_fault"], 0, "half")
        (out / "web" / f"clickstream-{s:04d}.jsonl").write_text("\n".join(lines) + "\n")


def _bots(config: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Cookies that fetch a page twice a second for a while."""
    start_ms = pd.Timestamp(config.start, tz="UTC").value // 1_000_000
    items = np.array([f"w{i}" for i in range(len(CATEGORIES) * config.items_per_category)], dtype=object)
    frames = []
    for b in range(config.bots):
        t0 = start_ms + int(rng.integers(0, (config.days - 1) * 86_400_000))
        m = config.bot_events
        frames.append(
            pd.DataFrame(
                {
                    "eid": [f"e{v:016x}" for v in rng.integers(0, 2**63, m)],
                    "ts_ms": t0 + np.arange(m) * 500,
                    "cookie": f"ckbot{b:06d}",
                    "act": "pv",
                    "sku": items[rng.integers(0, len(items), m)],
                    "q": None,
                    "dwell": 0.1,
                    "ua": "python-requests/2.31",
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _write_app(
    out: Path,
    events: pd.DataFrame,
    persons: pd.DataFrame,
    config: SyntheticConfig,
    rng: np.random.Generator,
    counts: _Counts,
) -> None:
    names = {v: k for k, v in APP_ACTIONS.items()}
    person = events["person"].to_numpy()
    skew_ms = persons["clock_skew_s"].to_numpy()[person] * 1000
    utc = pd.to_datetime(events["ts_ms"].to_numpy() + skew_ms, unit="ms", utc=True).floor("s")
    tz = persons["timezone"].to_numpy()[person]
    local = np.empty(len(events), dtype=object)
    for zone in np.unique(tz):
        sel = tz == zone
        local[sel] = utc[sel].tz_convert(zone).strftime("%Y-%m-%dT%H:%M:%S")
    action = events["action"].to_numpy()
    qty = np.where(np.isin(action, ["cart", "purchase"]), events["value"].to_numpy(), np.nan)
    frame = pd.DataFrame(
        {
            "account_id": persons["account"].to_numpy()[person],
            "os": events["platform"].to_numpy(),
            "event_time": local,
            "tz": tz,
            "event": events["action"].map(names).to_numpy(),
            "product_id": events["item"].to_numpy(),
            "qty": pd.array(qty, dtype="Int64"),
            "query": events["text"].to_numpy(),
        }
    )
    faults: list[Fault] = [
        (
            "missing_item_id",
            config.missing_rate,
            _set("product_id", None),
            lambda f: f["event"].ne("search").to_numpy(),
        ),
        ("ts_in_future", config.future_clock_rate, _future, None),
        ("invalid_ts", config.missing_rate, _set("event_time", "not-a-time"), None),
        ("malformed_row", config.malformed_rate, _malformed, None),
    ]
    frame = _inject(frame, faults, config, rng, counts)
    lines = frame.drop(columns="_fault").to_csv(index=False).splitlines()
    lines = _malformed_lines(lines, frame["_fault"], 1, ",")
    (out / "app" / "events.csv").write_text("\n".join(lines) + "\n")


def _future(rows: pd.DataFrame) -> pd.DataFrame:
    """A device whose clock jumped twelve years ahead (a leap year, like 2024, so every date exists)."""
    rows["event_time"] = rows["event_time"].str.replace(r"^\d{4}", "2036", regex=True)
    return rows


def _write_miniapp(
    out: Path,
    events: pd.DataFrame,
    persons: pd.DataFrame,
    config: SyntheticConfig,
    rng: np.random.Generator,
    counts: _Counts,
) -> None:
    codes = {v: k for k, v in MINIAPP_ACTIONS.items()}
    action = events["action"].to_numpy()
    amount = np.where(np.isin(action, ["cart", "purchase"]), events["value"].to_numpy(), np.nan)
    frame = pd.DataFrame(
        {
            "openid": persons["openid"].to_numpy()[events["person"].to_numpy()],
            "t": events["ts_ms"].to_numpy() // 1000,
            "type": events["action"].map(codes).to_numpy(),
            "goods_id": events["item"].to_numpy(),
            "amount": pd.Series(amount).map(lambda v: "" if np.isnan(v) else f"{v:.0f}").to_numpy(),
            "keyword": events["text"].to_numpy(),
        }
    )
    faults: list[Fault] = [
        ("ts_out_of_range", config.missing_rate, _set("t", 0), None),
        ("invalid_value", config.missing_rate, _set("amount", "n/a"), None),
        ("malformed_row", config.malformed_rate, _malformed, None),
    ]
    frame = _inject(frame, faults, config, rng, counts)
    lines = frame.drop(columns="_fault").to_csv(index=False, sep="\t").splitlines()
    lines = _malformed_lines(lines, frame["_fault"], 1, "\t")
    (out / "miniapp" / "events.tsv").write_text("\n".join(lines) + "\n")


def _links(persons: pd.DataFrame, config: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Login links between a person's ids on platforms they use; only some persons log in."""
    weights = np.stack(persons["platform_weights"].to_numpy())
    web, app, mini = weights[:, 0] > 0, (weights[:, 1] + weights[:, 2]) > 0, weights[:, 3] > 0
    rows = []
    pairs = (
        ("web", "cookie", "app", "account", web & app),
        ("miniapp", "openid", "app", "account", mini & app),
        ("web", "cookie", "miniapp", "openid", web & mini),
    )
    for pa_, ca, pb, cb, both in pairs:
        chosen = both & (rng.random(len(persons)) < config.link_share)
        for _, row in persons[chosen].iterrows():
            rows.append(_link_rows(pa_, row[ca], pb, row[cb], weights[row["person"]]))
    flat = [r for group in rows for r in group]
    return pd.DataFrame(flat, columns=["platform_a", "user_id_a", "platform_b", "user_id_b"])


def _link_rows(pa_: str, ida: str, pb: str, idb: str, weights: np.ndarray) -> list[tuple[str, str, str, str]]:
    """An app account is one id on iOS and Android: link it on each app platform the person uses."""
    sides_a = [pa_] if pa_ != "app" else [p for p, w in zip(("ios", "android"), weights[1:3], strict=True) if w > 0]
    sides_b = [pb] if pb != "app" else [p for p, w in zip(("ios", "android"), weights[1:3], strict=True) if w > 0]
    return [(a, ida, b, idb) for a in sides_a for b in sides_b]


def _write_truth(out: Path, persons: pd.DataFrame, config: SyntheticConfig, counts: _Counts) -> None:
    truth = pd.DataFrame(
        {
            "person": persons["person"],
            "cookie": persons["cookie"],
            "account": persons["account"],
            "openid": persons["openid"],
            "timezone": persons["timezone"],
            "drift": persons["drift"],
            "interest_start": [list(map(float, v)) for v in persons["interest_start"]],
            "interest_end": [list(map(float, v)) for v in persons["interest_end"]],
        }
    )
    pq.write_table(pa.Table.from_pandas(truth, preserve_index=False), out / "truth" / "persons.parquet")
    quarantined = dict(sorted(counts.quarantined.items()))
    n_quarantined = sum(quarantined.values())
    expected = {
        "read": counts.read,
        "accepted": counts.read - n_quarantined - counts.duplicates,
        "quarantined": quarantined,
        "duplicates": counts.duplicates,
        "bots": [f"ckbot{b:06d}" for b in range(config.bots)],
    }
    (out / "truth" / "expected_report.json").write_text(json.dumps(expected, indent=2))
    (out / "truth" / "categories.json").write_text(json.dumps(list(CATEGORIES)))
    (out / "truth" / "config.json").write_text(json.dumps(asdict(config), indent=2))
