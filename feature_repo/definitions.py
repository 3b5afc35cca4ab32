"""Feast definitions: entities → sources → feature views → on-demand views → services.

Offline tables are parquet files that the feature pipelines (``pipelines/features.py``)
write to ``data/`` next to ``feature_store.yaml``; Feast resolves these relative paths against
the repo folder, so the same definitions serve every work directory and both profiles.

Snapshots are taken per person and day at the person's last event of that day (the row's
``event_timestamp``): each row holds only what was known at that time. Window counts are
calendar-day windows ending on the snapshot's day.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String

ACTIONS = ("view", "click", "like", "favorite", "comment", "share", "search", "cart", "purchase", "rate")
WINDOWS = ("1d", "7d", "30d")

# A person: the connected component of a user's platform accounts (pseudonymised).
person = Entity(
    name="person",
    join_keys=["person_id"],
    value_type=ValueType.STRING,
    description="One person across platforms (keyed hash of the identity component).",
)

# An item as its platform knows it.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="An item id.")

# A platform, used beside person for per-platform activity.
platform = Entity(
    name="platform",
    join_keys=["platform"],
    value_type=ValueType.STRING,
    description="Source platform (web, ios, douban_book, ...).",
)

# A platform account (pseudonymised user id): resolves to its person at request time.
user = Entity(
    name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A pseudonymised platform user id."
)

# Per (person, platform): action counts over 1/7/30-day windows.
person_activity_source = FileSource(
    name="person_activity_source",
    path="data/person_activity.parquet",
    timestamp_field="event_timestamp",
)

# Per person: cross-platform totals, platform mix, category affinity, recency.
person_profile_source = FileSource(
    name="person_profile_source",
    path="data/person_profile.parquet",
    timestamp_field="event_timestamp",
)

# Per person: the last N events as arrays (N = XINTEREST_SEQUENCE_LENGTH).
person_sequence_source = FileSource(
    name="person_sequence_source",
    path="data/person_sequence.parquet",
    timestamp_field="event_timestamp",
)

# Per item: popularity and conversion over windows, on the item's platform.
item_stats_source = FileSource(
    name="item_stats_source",
    path="data/item_stats.parquet",
    timestamp_field="event_timestamp",
)

# Per person: the VAE's interest embedding, written back after each training.
person_embedding_source = FileSource(
    name="person_embedding_source",
    path="data/person_embedding.parquet",
    timestamp_field="event_timestamp",
)

# Per platform account: its person.
user_identity_source = FileSource(
    name="user_identity_source",
    path="data/user_identity.parquet",
    timestamp_field="event_timestamp",
)

# Live events: /feedback and `xinterest push` send updated sequence, activity and profile rows here.
person_sequence_push = PushSource(name="person_sequence_push", batch_source=person_sequence_source)
person_activity_push = PushSource(name="person_activity_push", batch_source=person_activity_source)
person_profile_push = PushSource(name="person_profile_push", batch_source=person_profile_source)

ACTIVITY_FIELDS = [Field(name=f"{a}_{w}", dtype=Int64) for a in ACTIONS for w in WINDOWS] + [
    Field(name=f"events_{w}", dtype=Int64) for w in WINDOWS
]

# TTL 30 days: the longest window; an older snapshot means no activity in any window.
person_activity_fv = FeatureView(
    name="person_activity",
    entities=[person, platform],
    ttl=timedelta(days=30),
    schema=ACTIVITY_FIELDS,
    source=person_activity_push,
    online=True,
    description="Action counts per person and platform over 1/7/30 calendar-day windows.",
)

# TTL 90 days: the mix and the (time-decayed) affinity stay informative for a season.
person_profile_fv = FeatureView(
    name="person_profile",
    entities=[person],
    ttl=timedelta(days=90),
    schema=[
        Field(name="events_total_30d", dtype=Int64),
        Field(name="active_platforms_30d", dtype=Int64),
        Field(name="platform_names", dtype=Array(String)),
        Field(name="platform_shares", dtype=Array(Float32)),
        Field(name="top_categories", dtype=Array(String)),
        Field(name="category_affinity", dtype=Array(Float32)),
        Field(name="first_event_ts", dtype=Int64),
        Field(name="last_event_ts", dtype=Int64),
    ],
    source=person_profile_push,
    online=True,
    description="Cross-platform totals (30d), platform mix, time-decayed category affinity "
    "(half-life 14 days, search queries mapped to categories), first/last event (epoch s).",
)

# TTL 365 days: a person's recent behaviour is the best cold-start signal even after a pause.
person_sequence_fv = FeatureView(
    name="person_sequence",
    entities=[person],
    ttl=timedelta(days=365),
    schema=[
        Field(name="seq_items", dtype=Array(String)),
        Field(name="seq_actions", dtype=Array(String)),
        Field(name="seq_platforms", dtype=Array(String)),
        Field(name="seq_gaps", dtype=Array(Float32)),
        Field(name="seq_last_ts", dtype=Int64),
        Field(name="seen_items", dtype=Array(String)),
    ],
    source=person_sequence_push,
    online=True,
    description="Last N item events, oldest first; gaps are seconds before the last event; "
    "seen_items: the distinct items the person interacted with (the most recent 500).",
)

# TTL 30 days: popularity older than a month is not popularity.
item_stats_fv = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(days=30),
    schema=[
        Field(name="item_platform", dtype=String),
        Field(name="item_category", dtype=String),
        *[
            Field(name=f"{k}_{w}", dtype=Int64)
            for k in ("views", "positives", "purchases", "person_days")
            for w in WINDOWS
        ],
        Field(name="conversion_7d", dtype=Float32),
        Field(name="conversion_30d", dtype=Float32),
    ],
    source=item_stats_source,
    online=True,
    description="Views, positive actions, purchases and person-days (distinct persons per day, summed) per item "
    "over windows; "
    "conversion = purchases / views (0 without views).",
)

# No TTL: an embedding holds until the next training writes a new one.
person_embedding_fv = FeatureView(
    name="person_embedding",
    entities=[person],
    ttl=timedelta(seconds=0),
    schema=[
        Field(name="interest_embedding", dtype=Array(Float32)),
        Field(name="embedding_model_version", dtype=String),
    ],
    source=person_embedding_source,
    online=True,
    description="The attention-VAE's latent mean for the person (the interest embedding).",
)

# No TTL: identity links do not expire.
user_identity_fv = FeatureView(
    name="user_identity",
    entities=[user],
    ttl=timedelta(seconds=0),
    schema=[Field(name="person_id", dtype=String)],
    source=user_identity_source,
    online=True,
    description="Which person a pseudonymised platform account belongs to.",
)

# The request's own time, for features that depend on when they are asked for.
request_context = RequestSource(name="request_context", schema=[Field(name="request_ts", dtype=Int64)])


# Recency at request time: seconds and days since the person's last event.
@on_demand_feature_view(
    sources=[person_profile_fv, request_context],
    schema=[Field(name="seconds_since_last_event", dtype=Float64), Field(name="days_since_last_event", dtype=Float64)],
    mode="python",
)
def person_recency(inputs: dict) -> dict:
    seconds = [
        float(max(0, now - last)) if last is not None and now is not None else -1.0
        for now, last in zip(inputs["request_ts"], inputs["last_event_ts"], strict=True)
    ]
    return {
        "seconds_since_last_event": seconds,
        "days_since_last_event": [s / 86400.0 if s >= 0 else -1.0 for s in seconds],
    }


# The attention-VAE's contract: the sequence it encodes.
vae_v1 = FeatureService(name="vae_v1", features=[person_sequence_fv], description="Inputs of the attention-VAE.")

# The re-ranker's contract: person, person x platform, item and request-time features.
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[person_profile_fv, person_activity_fv, item_stats_fv, person_recency],
    description="Inputs of the XGBoost re-ranker (beside the VAE's own signals).",
)
