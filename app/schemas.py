"""Response bodies, valid on pydantic 1.9 and 2 (plain fields, typing generics, no
``model_config``/``Config`` tricks). Routes return plain dicts; FastAPI validates and
documents them with these models (``response_model=``).

Fields are in the order the routes build their dicts, and a field has a default only
where the key may be missing, so that validation changes no answer.
"""

from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel


def iso_time(timestamp: Optional[float]) -> Optional[str]:
    """A UNIX time as answers show times: ISO 8601 in UTC (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


class ErrorBody(BaseModel):
    error: str
    detail: str


class ModelRef(BaseModel):
    name: str
    version: int


class LabelScore(BaseModel):
    label: str
    score: float


class LabelResponse(BaseModel):
    model: ModelRef
    labels: List[LabelScore]
    took_ms: float


class FileResult(BaseModel):
    filename: Optional[str] = None
    labels: List[LabelScore]


class LabelBatchResponse(BaseModel):
    model: ModelRef
    results: List[FileResult]
    took_ms: float


class JobOut(BaseModel):
    id: str
    job_id: str
    name: str
    state: str
    phase: Optional[str] = None
    progress: Dict[str, Any] = {}
    metrics: Optional[Dict[str, Any]] = None
    result: Optional[Dict[str, Any]] = None
    version: Optional[int] = None
    error: Optional[str] = None
    attempts: int = 0
    cancel_requested: bool = False
    params: Dict[str, Any] = {}
    trigger: str = "api"  # who started it: api, cli, console (X-Poets-Client) or policy
    created: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    location: str


class JobList(BaseModel):
    jobs: List[JobOut]


class LoadError(BaseModel):
    version: int
    detail: str


class ModelOut(BaseModel):
    name: str
    current_version: Optional[int] = None
    pinned_version: Optional[int] = None
    loaded_version: Optional[int] = None
    loading: bool = False
    versions: List[int] = []
    load_error: Optional[LoadError] = None
    loaded_at: Optional[str] = None
    latest_promotion: Optional[Dict[str, Any]] = None  # the newest version's gate decision


class ModelDetail(ModelOut):
    drift: Optional[Dict[str, Any]] = None  # the loaded version's recent answers against its test set
    policy: Optional[Dict[str, Any]] = None


class ModelList(BaseModel):
    default_model: str
    serves_by_default: Optional[str] = None  # the model a request without ?model= gets
    max_loaded_models: Optional[int] = None
    models: List[ModelOut]


class VersionOut(BaseModel):
    version: int
    current: bool
    pinned: bool = False
    loaded: bool
    created: Optional[str] = None
    architecture: Optional[str] = None
    test_accuracy: Optional[float] = None
    labels: List[str] = []
    job_id: Optional[str] = None
    load_error: Optional[str] = None
    metrics: Dict[str, Any] = {}
    dataset: Optional[Dict[str, Any]] = None
    hyperparameters: Dict[str, Any] = {}
    promotion: Optional[Dict[str, Any]] = None  # the gate's decision when it was published


class VersionList(BaseModel):
    name: str
    current_version: Optional[int] = None
    pinned_version: Optional[int] = None
    loaded_version: Optional[int] = None
    versions: List[VersionOut]


class ActivateResponse(BaseModel):
    name: str
    version: int
    loaded_version: Optional[int] = None


class PinResponse(BaseModel):
    name: str
    pinned_version: Optional[int] = None
    current_version: Optional[int] = None
    loaded_version: Optional[int] = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str  # ready, or degraded: serving, but something it needs for new work is missing
    models: Dict[str, int] = {}
    broker: str
    degraded: List[str] = []  # what is missing while it serves (the store's bucket unreachable)


class PolicyOut(BaseModel):
    dataset: str
    after_new_images: Optional[int] = None
    every_hours: Optional[float] = None
    min_interval_minutes: float
    params: Dict[str, Any] = {}
    due: bool
    reason: str
    new_images: int
    next_due: Optional[str] = None


class Delivery(BaseModel):
    id: str
    event_id: str
    event: str
    url: str
    state: str
    attempts: int
    last_status: Optional[int] = None
    last_error: Optional[str] = None
    created: str
    updated: str
    next_attempt: Optional[str] = None


class DeliveryList(BaseModel):
    urls: int
    deliveries: List[Delivery]


class DatasetOut(BaseModel):
    name: str
    classes: Dict[str, int]  # class -> how many images
    images: int
    bytes: int
    fingerprint: str  # of the images' contents: a retrain records it


class DatasetList(BaseModel):
    datasets: List[DatasetOut]


class ImageOut(BaseModel):
    id: str
    label: str
    filename: str
    duplicate: bool  # already in the dataset: nothing was added
    url: str
    thumbnail: str


class ImagePage(BaseModel):
    name: str
    label: Optional[str]
    total: int
    offset: int
    limit: int
    items: List[ImageOut]


class ImagesAdded(BaseModel):
    ids: List[str]
    images: List[ImageOut]


class Skipped(BaseModel):
    path: str
    reason: str


class ArchiveImported(DatasetOut):
    added: int
    duplicates: int
    skipped: List[Skipped]  # the first 100
    skipped_count: int


class DatasetDeleted(BaseModel):
    deleted: str


class ImageDeleted(BaseModel):
    deleted: str
    label: str


class ClassDeleted(BaseModel):
    deleted: str
    images: int


class ReviewModel(BaseModel):
    name: Optional[str]
    version: Optional[int]


class ReviewItem(BaseModel):
    id: str
    model: Optional[ReviewModel]
    scores: List[LabelScore]
    top_score: Optional[float]
    created: Optional[str]
    image: str
    thumbnail: str


class ReviewPage(BaseModel):
    total: int
    offset: int
    limit: int
    pending: int  # frames queued or being written
    dropped: int  # frames dropped for room or because the queue was full
    items: List[ReviewItem]


class ReviewDiscarded(BaseModel):
    id: str
    discarded: bool


class ReviewFiled(BaseModel):
    id: str
    filed: bool
    dataset: str
    image: ImageOut


ReviewDone = Union[ReviewFiled, ReviewDiscarded]


class ImageCookie(BaseModel):
    needed: bool  # False: no API keys, images are open
    expires_in: Optional[int]


class CookieRemoved(BaseModel):
    removed: bool
