"""Request and response bodies. Bounds live here, so that OpenAPI states them.

Ids are non-negative integers of at most 18 digits (what ingest accepts), given as JSON
numbers: strings, floats and booleans are refused in bodies (`strict`), so a typo is a 422 that
names the field rather than a silent conversion.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationInfo,
    field_validator,
)

from recsys.ingest import MAX_TIMESTAMP_MS

MAX_ID = 10**18 - 1
MAX_K = 100
MAX_SESSION_ITEMS = 100
MAX_EXCLUDE = 1_000
MAX_EVENTS = 1_000

Id = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
# what an item in an answer looks like (the schemas' examples)
EXAMPLE_ITEM: dict[str, JsonValue] = {
    "item_id": 461686,
    "rank": 1,
    "score": 0.91,
    "source": "ranker",
    "confidence": 0.42,
    "category_id": 1037,
}
# a category filter: an id, or -1 for items of no known category (as answers write it)
CategoryId = Annotated[int, Field(strict=True, ge=-1, le=MAX_ID)]
Strategy = Literal["personalized", "session", "popular"]
Source = Literal["ranker", "als", "similar", "popular"]
IMPRESSION_ID_PATTERN = r"^[0-9a-f]{32}$"
ImpressionId = Annotated[
    str, Field(pattern=IMPRESSION_ID_PATTERN, examples=["3f9c2a7d1e4b6a80000000000000002a"])
]


class Recommendation(BaseModel):
    item_id: int
    rank: int = Field(description="1 = first, after filters")
    score: float = Field(description="the score of `source` (scales differ between sources)")
    source: Source = Field(
        description="ranker: CatBoost; als: ALS candidate (refill); similar: similarity to "
        "the session's or the visitor's latest items; popular: popularity (fallback, refill)"
    )
    confidence: float | None = Field(
        default=None,
        description="split-conformal: calibrated probability that a relevant item sits at or "
        "above this item's rank in the visitor's published list; null for items not from it",
    )
    category_id: int = Field(description="-1 when unknown")


# what every recommendation answer says of itself for the closed loop (api.loop)
AnswerImpressionId = Annotated[
    ImpressionId,
    Field(
        description="this answer's id: send it with the events it leads to (POST /v1/events) "
        "for exact attribution; also in the X-Impression-Id header"
    ),
]
ExperimentName = Annotated[
    str | None, Field(description="the experiment the visitor is in, when there is one")
]
VariantName = Annotated[str | None, Field(description="the visitor's variant in it")]


class RecommendationList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "visitor_id": 257597,
                    "items": [EXAMPLE_ITEM],
                    "strategy": "personalized",
                    "impression_id": "3f9c2a7d1e4b6a80000000000000002a",
                    "experiment": "ranker_vs_popularity",
                    "variant": "control",
                    "snapshot_version": "20261202T040450Z-bb71950c",
                    "model_version": "ranker-20261202T040450Z",
                }
            ]
        }
    )

    visitor_id: int | None
    items: list[Recommendation]
    strategy: Strategy
    impression_id: AnswerImpressionId
    experiment: ExperimentName = None
    variant: VariantName = None
    snapshot_version: str
    model_version: str


class SimilarItems(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "item_id": 355908,
                    "items": [{**EXAMPLE_ITEM, "source": "similar", "confidence": None}],
                    "strategy": "similar",
                    "impression_id": "3f9c2a7d1e4b6a80000000000000002b",
                    "experiment": None,
                    "variant": None,
                    "snapshot_version": "20261202T040450Z-bb71950c",
                    "model_version": "ranker-20261202T040450Z",
                }
            ]
        }
    )

    item_id: int
    items: list[Recommendation]
    strategy: Literal["similar", "popular"]
    impression_id: AnswerImpressionId
    experiment: ExperimentName = None
    variant: VariantName = None
    snapshot_version: str
    model_version: str


class RecommendationRequest(BaseModel):
    """A request to rank now, with what the visitor is doing in this session."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "visitor_id": 257597,
                    "session_item_ids": [355908, 248676],
                    "k": 10,
                    "exclude_item_ids": [461686],
                },
                {"session_item_ids": [355908], "k": 5},
            ]
        },
    )

    visitor_id: Id | None = None
    session_item_ids: Annotated[list[Id], Field(max_length=MAX_SESSION_ITEMS)] = Field(
        default_factory=list,
        description="items of the current session in time order (the latest last)",
    )
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = 10
    category_id: CategoryId | None = None
    exclude_item_ids: Annotated[list[Id], Field(max_length=MAX_EXCLUDE)] = Field(
        default_factory=list
    )


class Event(BaseModel):
    """One event in the RetailRocket layout."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "timestamp": 1442004589439,
                    "visitorid": 257597,
                    "event": "view",
                    "itemid": 355908,
                    "impression_id": "3f9c2a7d1e4b6a80000000000000002a",
                },
                {
                    "timestamp": 1442004917175,
                    "visitorid": 257597,
                    "event": "transaction",
                    "itemid": 355908,
                    "transactionid": 4000,
                },
            ]
        },
    )

    timestamp: Annotated[int, Field(strict=True, ge=0, lt=MAX_TIMESTAMP_MS)] = Field(
        description="milliseconds since the epoch, UTC"
    )
    visitorid: Id
    event: Literal["view", "addtocart", "transaction"]
    itemid: Id
    transactionid: Id | None = Field(
        default=None,
        validate_default=True,
        description="required for a transaction, absent otherwise",
    )
    impression_id: ImpressionId | None = Field(
        default=None,
        description="the `impression_id` of the recommendation answer that led to this event, "
        "when the client knows it: the event is then attributed to that answer exactly "
        "(otherwise by time, within the attribution window)",
    )

    @field_validator("transactionid")
    @classmethod
    def _transaction_id_iff_transaction(cls, value: int | None, info: ValidationInfo) -> int | None:
        event = info.data.get("event")
        if event == "transaction" and value is None:
            raise ValueError("a transaction needs a transactionid")
        if event is not None and event != "transaction" and value is not None:
            raise ValueError(f"a {event} event has no transactionid")
        return value


def _one_or_many(value: Any) -> str:
    return "events" if isinstance(value, list) else "event"


EventBatch = Annotated[
    Annotated[Event, Tag("event")]
    | Annotated[Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)], Tag("events")],
    Discriminator(_one_or_many),
]


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events written for the next ingest")
    batch_id: str = Field(description="the landing file's name, without `.csv`")
    snapshot_version: str | None
    model_version: str | None
    retry_safe: bool = Field(
        description="whether sending this request again lands its events once (it had an "
        "Idempotency-Key); without one, a retry lands them twice"
    )
    possible_duplicate: bool = Field(
        default=False,
        description="the same body came from the same caller without a key a moment ago: "
        "probably a retry, and its events are now in the landing area twice",
    )
    note: str | None = Field(
        default=None, description="what to do differently, when there is something"
    )


class Health(BaseModel):
    status: Literal["ok"]
    snapshot_version: str | None
    model_version: str | None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    snapshot_version: str | None = None
    model_version: str | None = None
    feature_version: str | None = None
    cutoff_at: str | None = Field(
        default=None,
        description="the features' cutoff, ISO 8601 in UTC",
        examples=["2015-09-18T02:59:47Z"],
    )
    snapshot_age_seconds: float | None = None
    detail: str | None = None


class ValidationErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: path, query or body, then the field")
    msg: str
    type: str


class ApiError(BaseModel):
    """Every error answer (4xx, 5xx) of every route: one model for a client to handle."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"detail": "a valid X-API-Key header is required"},
                {
                    "detail": [
                        {
                            "loc": ["query", "k"],
                            "msg": "Input should be less than or equal to 100",
                            "type": "less_than_equal",
                        }
                    ]
                },
            ]
        }
    )

    detail: str | list[ValidationErrorItem] = Field(
        description="what went wrong: a sentence, or for a 422 the refused fields"
    )
