"""Every setting Poets reads, in one typed place.

Settings come from environment variables (``POETS_*``). Each field's metadata names
its variable and says what it means; ``poets settings`` prints them all, and the
README's table is made from the same text.
"""

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

MiB = 1024 * 1024


def _default_home() -> Path:
    return Path.home() / ".poets"


def _default_backbone_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "poets" / "backbones"


def _setting(
    env: str,
    default: Any,
    help: str,
    parse: Optional[Callable[[str], Any]] = None,
    at_least: Optional[float] = None,
    at_most: Optional[float] = None,
) -> Any:
    """A field read from ``env``; a number outside ``[at_least, at_most]`` is refused at start-up."""
    meta = {"env": env, "help": help, "parse": parse, "at_least": at_least, "at_most": at_most}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false, got {!r}".format(text))


def _parse_list(text: str) -> Tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_optional_path(text: str) -> Optional[Path]:
    return Path(text).expanduser() if text.strip() else None


def _parse_optional_str(text: str) -> Optional[str]:
    return text.strip() or None


def _allowed(at_least: Optional[float], at_most: Optional[float]) -> str:
    bounds = []
    if at_least is not None:
        bounds.append("at least {:g}".format(at_least))
    if at_most is not None:
        bounds.append("at most {:g}".format(at_most))
    return " and ".join(bounds)


def _check_range(env: str, value: Any, at_least: Optional[float], at_most: Optional[float]) -> None:
    """Refuse a number out of its range, naming the variable and the range.

    Raises:
        ValueError: ``value`` is below ``at_least`` or above ``at_most`` (or not a number).
    """
    if at_least is None and at_most is None:
        return
    if (
        math.isnan(value)  # no comparison holds for NaN
        or (at_least is not None and value < at_least)
        or (at_most is not None and value > at_most)
    ):
        raise ValueError(
            "{}={}: out of range; allowed: {}.".format(env, _shown(value), _allowed(at_least, at_most))
        )


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError("expected one of {}, got {!r}".format(", ".join(choices), text))
        return value

    return parse


def _parse_store_url(text: str) -> Optional[str]:
    value = text.strip()
    if not value:
        return None
    if "://" in value and not value.startswith("s3://"):
        raise ValueError("expected a local folder or s3://bucket/prefix, got {!r}".format(text))
    if value.startswith("s3://") and not value[len("s3://") :].split("/", 1)[0]:
        raise ValueError("an s3:// URL names its bucket: s3://bucket/prefix, got {!r}".format(text))
    return value


def _parse_s3_url(text: str) -> Optional[str]:
    value = _parse_store_url(text)
    if value is not None and not value.startswith("s3://"):
        raise ValueError("expected s3://bucket/prefix, got {!r}".format(text))
    return value


def _parse_webhook_urls(text: str) -> Tuple[str, ...]:
    from poets.engine.errors import ConfigurationError
    from poets.engine.webhooks import check_urls

    try:
        return check_urls(_parse_list(text))
    except ConfigurationError as exc:
        raise ValueError(exc.detail) from None


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Settings:
    """Poets' configuration. Build it with :meth:`from_env`."""

    home: Path = _setting(
        "POETS_HOME",
        _default_home,
        "Where all state lives: model store, bottleneck cache, jobs, embedded broker, uploads.",
        lambda text: Path(text).expanduser(),
    )
    model_dir: Optional[Path] = _setting(
        "POETS_MODEL_DIR",
        None,
        "The model store (TF Serving layout: <dir>/<name>/<version>/). Default: $POETS_HOME/models.",
        _parse_optional_path,
    )
    store_url: Optional[str] = _setting(
        "POETS_STORE_URL",
        None,
        "Where published model versions, job inputs and misclassified copies live: a local folder "
        "(the default: POETS_MODEL_DIR, else $POETS_HOME/models) or s3://bucket/prefix, shared by "
        "several machines (credentials from the standard AWS chain).",
        _parse_store_url,
    )
    s3_endpoint_url: Optional[str] = _setting(
        "POETS_S3_ENDPOINT_URL",
        None,
        "The S3-compatible server of s3:// URLs (MinIO, Ceph...): http(s)://host:port. Unset: AWS.",
        _parse_optional_str,
    )
    store_timeout_s: float = _setting(
        "POETS_STORE_TIMEOUT_S",
        5.0,
        "Longest wait for the bucket to connect or answer one request; an unreachable bucket "
        "makes /readyz say degraded and /retrain answer 503 while /label serves cached versions.",
        float,
        at_least=0.1,
        at_most=600,
    )
    store_cache_mb: int = _setting(
        "POETS_STORE_CACHE_MB",
        2048,
        "With an s3:// store: most MiB of downloaded versions kept on this machine "
        "($POETS_HOME/store-cache); least recently used versions go first.",
        int,
        at_least=1,
    )
    bottleneck_store_url: Optional[str] = _setting(
        "POETS_BOTTLENECK_STORE_URL",
        None,
        "s3://bucket/prefix where workers share bottlenecks (content-addressed: one backbone and "
        "preprocessing give the same files on every machine). Unset: each worker's own disk only.",
        _parse_s3_url,
    )
    job_history: int = _setting(
        "POETS_JOB_HISTORY",
        10000,
        "Most finished job records kept (in SQLite, or in Redis with a redis:// broker); past it the "
        "oldest finished ones are deleted, logged and counted. Queued and running jobs always stay.",
        int,
        at_least=10,
    )
    backbone_dir: Path = _setting(
        "POETS_BACKBONE_DIR",
        _default_backbone_dir,
        "Backbone weights, one folder per architecture (frozen_graph.pb or a SavedModel); "
        "downloads are cached here.",
        lambda text: Path(text).expanduser(),
    )
    broker_url: Optional[str] = _setting(
        "POETS_BROKER_URL",
        None,
        "A redis:// URL selects Redis as broker and for model-swap notices. "
        "Unset: an embedded SQLite broker under $POETS_HOME.",
        _parse_optional_str,
    )
    data_root: Optional[Path] = _setting(
        "POETS_DATA_ROOT",
        None,
        "Server-side folder that /retrain may read datasets from (image_dir). Unset: uploads only.",
        _parse_optional_path,
    )
    tensorboard_dir: Optional[Path] = _setting(
        "POETS_LOGS_DIR",
        None,
        "TensorBoard event files, one folder per model and job. Default: $POETS_HOME/logs.",
        _parse_optional_path,
    )
    api_keys: Tuple[str, ...] = _setting(
        "POETS_API_KEYS",
        (),
        "Comma-separated API keys for /retrain, job cancellation and model activation "
        "(header X-API-Key). Empty: no key needed.",
        _parse_list,
    )
    label_requires_key: bool = _setting(
        "POETS_LABEL_REQUIRES_KEY", False, "Ask for an API key on /label too.", _parse_bool
    )
    allowed_hosts: Tuple[str, ...] = _setting(
        "POETS_ALLOWED_HOSTS",
        (),
        "Host names the API answers to besides IP addresses and localhost (a guard against DNS "
        "rebinding): comma-separated, '.example.com' for a domain and its subdomains, '*' for any.",
        _parse_list,
    )
    allowed_origins: Tuple[str, ...] = _setting(
        "POETS_ALLOWED_ORIGINS",
        (),
        "Other sites (scheme://host[:port], comma-separated) whose pages may send POST, PUT, PATCH "
        "and DELETE requests; the console's own origin and clients that send no Origin always may.",
        _parse_list,
    )
    image_cookie_s: float = _setting(
        "POETS_IMAGE_COOKIE_S",
        3600.0,
        "With API keys on: how long the console's image cookie lets the browser's image tags "
        "read image data; the console renews it while open.",
        float,
        at_least=10,
        at_most=7 * 24 * 3600,
    )
    default_model: str = _setting(
        "POETS_DEFAULT_MODEL",
        "default",
        "Model name used by /retrain and /label when the request names none.",
    )
    max_upload_bytes: int = _setting(
        "POETS_MAX_UPLOAD_BYTES", 20 * MiB, "Largest /label request body.", int, at_least=1
    )
    max_archive_bytes: int = _setting(
        "POETS_MAX_ARCHIVE_BYTES",
        2048 * MiB,
        "Largest dataset archive upload to /retrain.",
        int,
        at_least=1,
    )
    max_extracted_bytes: int = _setting(
        "POETS_MAX_EXTRACTED_BYTES",
        8192 * MiB,
        "Largest total size of an extracted archive, checked from its headers before extracting.",
        int,
        at_least=1,
    )
    max_file_bytes: int = _setting(
        "POETS_MAX_FILE_BYTES",
        64 * MiB,
        "Largest single file inside a dataset archive.",
        int,
        at_least=1,
    )
    max_archive_ratio: float = _setting(
        "POETS_MAX_ARCHIVE_RATIO",
        200.0,
        "Largest compression ratio of an archive as a whole and of each member over 64 KiB "
        "(zip-bomb guard; images hardly compress).",
        float,
        at_least=1,
    )
    max_archive_files: int = _setting(
        "POETS_MAX_ARCHIVE_FILES",
        50000,
        "Most files in one dataset archive, checked before extracting.",
        int,
        at_least=1,
    )
    max_listed_files: int = _setting(
        "POETS_MAX_LISTED_FILES",
        100,
        "Most files a job record lists by name (skipped, misclassified); the counts are always complete.",
        int,
        at_least=0,
    )
    misclassified_job_bytes: int = _setting(
        "POETS_MISCLASSIFIED_JOB_BYTES",
        32 * MiB,
        "Most bytes of misclassified test images copied beside one job (at most "
        "POETS_MAX_LISTED_FILES images), so its record can show them after its upload is gone.",
        int,
        at_least=0,
    )
    misclassified_bytes: int = _setting(
        "POETS_MISCLASSIFIED_BYTES",
        512 * MiB,
        "Most bytes of misclassified-image copies kept for all jobs together; the oldest jobs' "
        "copies are removed first (their image URLs then answer 404, gone).",
        int,
        at_least=0,
    )
    max_image_pixels: int = _setting(
        "POETS_MAX_IMAGE_PIXELS",
        40000000,
        "Largest image (width x height) decoded; larger ones are refused as decompression bombs.",
        int,
        at_least=1,
    )
    max_training_steps: int = _setting(
        "POETS_MAX_TRAINING_STEPS",
        100000,
        "Upper bound on how_many_training_steps, checked when a job is submitted (the one step limit).",
        int,
        at_least=1,
    )
    max_batch_size: int = _setting(
        "POETS_MAX_BATCH_SIZE",
        32,
        "Dynamic batching: most /label images run together.",
        int,
        at_least=1,
    )
    batch_timeout_ms: float = _setting(
        "POETS_BATCH_TIMEOUT_MS",
        2.0,
        "Dynamic batching: longest wait for more images before running a batch.",
        float,
        at_least=0,
    )
    decode_threads: int = _setting(
        "POETS_DECODE_THREADS",
        0,
        "Threads decoding images; 0 means one per core.",
        int,
        at_least=0,
    )
    max_label_files: int = _setting(
        "POETS_MAX_LABEL_FILES",
        64,
        "Most images (multipart parts) in one /label request.",
        int,
        at_least=1,
    )
    max_loaded_models: int = _setting(
        "POETS_MAX_LOADED_MODELS",
        4,
        "Most models one API process keeps in memory (least recently used ones are unloaded; "
        "a request for one answers 503 with Retry-After while it loads again).",
        int,
        at_least=1,
    )
    max_connections: int = _setting(
        "POETS_MAX_CONNECTIONS",
        256,
        "Most open connections the API serves at once (uvicorn limit_concurrency); more get 503.",
        int,
        at_least=1,
    )
    keep_alive_s: int = _setting(
        "POETS_KEEP_ALIVE_S",
        30,
        "Seconds an idle keep-alive connection stays open.",
        int,
        at_least=0,
    )
    body_timeout_s: float = _setting(
        "POETS_BODY_TIMEOUT_S",
        30.0,
        "Longest time to receive a request body (slow clients get 408); /retrain archive "
        "uploads and dataset imports get POETS_UPLOAD_TIMEOUT_S.",
        float,
        at_least=0.1,
    )
    upload_timeout_s: float = _setting(
        "POETS_UPLOAD_TIMEOUT_S",
        3600.0,
        "Longest time to receive a /retrain archive upload or a dataset archive import.",
        float,
        at_least=0.1,
    )
    serve_runtime: str = _setting(
        "POETS_SERVE_RUNTIME",
        "saved_model",
        "What /label runs: saved_model, or tflite_fp16 / tflite_int8 for versions exported with "
        "the tflite format (one image per call; can be faster on small CPUs), or tftrt: TF-TRT "
        "FP16 engines built on this GPU at load time and cached beside the version (plain "
        "TensorFlow, with one warning, where TensorRT is missing).",
    )
    tftrt_max_workspace_bytes: int = _setting(
        "POETS_TFTRT_MAX_WORKSPACE_BYTES",
        256 * MiB,
        "TF-TRT: most GPU memory TensorRT may use as scratch while building and running an "
        "engine (the TX2 shares 8 GB between CPU and GPU).",
        int,
        at_least=1,
    )
    model_poll_s: float = _setting(
        "POETS_MODEL_POLL_S",
        1.0,
        "How often the API checks the model store for a new current version (a check costs "
        "well under a millisecond; Redis notices are faster still).",
        float,
        at_least=0.05,
    )
    job_visibility_timeout_s: int = _setting(
        "POETS_JOB_VISIBILITY_TIMEOUT_S",
        12 * 3600,
        "Seconds before an unacknowledged job is redelivered; longer than the longest job.",
        int,
        at_least=1,
    )
    worker_max_tasks_per_child: int = _setting(
        "POETS_WORKER_MAX_TASKS_PER_CHILD",
        10,
        "The worker's job process is replaced by a fresh one after this many jobs (returns "
        "the memory TensorFlow keeps); 0: never.",
        int,
        at_least=0,
    )
    worker_max_memory_mb: int = _setting(
        "POETS_WORKER_MAX_MEMORY_MB",
        2048,
        "The worker's job process is replaced after a job once its resident memory passed "
        "this many MiB; 0: no limit. The job it ran is never lost.",
        int,
        at_least=0,
    )
    worker_heartbeat_s: float = _setting(
        "POETS_WORKER_HEARTBEAT_S",
        3.0,
        "How often a worker marks its running job as alive, and looks for jobs of dead workers.",
        float,
        at_least=0.1,
    )
    worker_lost_after_s: float = _setting(
        "POETS_WORKER_LOST_AFTER_S",
        20.0,
        "A running job whose worker sent no heartbeat for this long is requeued (or cancelled, "
        "when its cancellation was asked for).",
        float,
        at_least=0.1,
    )
    min_free_mb: int = _setting(
        "POETS_MIN_FREE_MB",
        100,
        "/readyz says not ready while the disk of the model store or $POETS_HOME has less free "
        "space than this (MiB), or cannot be written.",
        int,
        at_least=0,
    )
    tf_memory_growth: bool = _setting(
        "POETS_TF_MEMORY_GROWTH", True, "Let TensorFlow grow GPU memory as needed.", _parse_bool
    )
    log_level: str = _setting("POETS_LOG_LEVEL", "INFO", "Logging level.")
    datasets_dir: Optional[Path] = _setting(
        "POETS_DATASETS_DIR",
        None,
        "Where /datasets keeps datasets, one folder each in the poets layout. Default: "
        "POETS_DATA_ROOT when set (so image_dir=NAME trains them too), else $POETS_HOME/datasets.",
        _parse_optional_path,
    )
    thumbnail_cache_bytes: int = _setting(
        "POETS_THUMBNAIL_CACHE_BYTES",
        64 * MiB,
        "Largest total size of the cached dataset and inbox thumbnails; the oldest go first.",
        int,
        at_least=0,
    )
    dataset_max_images: int = _setting(
        "POETS_DATASET_MAX_IMAGES",
        50000,
        "Most images one /datasets dataset may hold; adding or importing past it is refused (409).",
        int,
        at_least=1,
    )
    dataset_max_bytes: int = _setting(
        "POETS_DATASET_MAX_BYTES",
        8192 * MiB,
        "Largest total size of one /datasets dataset's images; adding or importing past it is refused (409).",
        int,
        at_least=1,
    )
    thumbnail_workers: int = _setting(
        "POETS_THUMBNAIL_WORKERS",
        2,
        "Most thumbnails made at once (each decodes a whole image, up to POETS_MAX_IMAGE_PIXELS); "
        "more requests wait their turn.",
        int,
        at_least=1,
        at_most=64,
    )
    send_timeout_s: float = _setting(
        "POETS_SEND_TIMEOUT_S",
        60.0,
        "Longest wait for a client to take the next piece of a streamed dataset export; a client "
        "that stops reading is cut off.",
        float,
        at_least=0.1,
    )
    collect: bool = _setting(
        "POETS_COLLECT",
        False,
        "Keep unsure /label frames of every model in the review inbox (else only with "
        "?collect=true or for POETS_COLLECT_MODELS).",
        _parse_bool,
    )
    collect_models: Tuple[str, ...] = _setting(
        "POETS_COLLECT_MODELS",
        (),
        "Comma-separated model names whose unsure /label frames are kept in the review inbox.",
        _parse_list,
    )
    collect_threshold: float = _setting(
        "POETS_COLLECT_THRESHOLD",
        0.6,
        "Collection keeps a frame when its top score is below this.",
        float,
        at_least=0,
    )
    collect_fraction: float = _setting(
        "POETS_COLLECT_FRACTION",
        1.0,
        "Collection keeps this fraction (0 to 1, sampled at random) of the frames under the threshold.",
        float,
        at_least=0,
        at_most=1,
    )
    collect_queue: int = _setting(
        "POETS_COLLECT_QUEUE",
        64,
        "Frames waiting to be written to the inbox; more are dropped and counted, so /label never waits.",
        int,
        at_least=1,
    )
    inbox_max_items: int = _setting(
        "POETS_INBOX_MAX_ITEMS",
        1000,
        "Most frames kept in the review inbox; the oldest are dropped and counted.",
        int,
        at_least=1,
    )
    inbox_max_bytes: int = _setting(
        "POETS_INBOX_MAX_BYTES",
        256 * MiB,
        "Largest total size of the review inbox; the oldest frames are dropped and counted.",
        int,
        at_least=1,
    )
    promote: str = _setting(
        "POETS_PROMOTE",
        "if_better",
        "if_better: a retrained version becomes current only when it is at least as accurate as the "
        "current one on the images both can be judged on (the current version's test images with "
        "their recorded labels, and reviewed frames); held versions are published and can be "
        "activated by hand. always: every new version becomes current.",
        _parse_choice("if_better", "always"),
    )
    promote_tolerance: float = _setting(
        "POETS_PROMOTE_TOLERANCE",
        0.0,
        "Points of accuracy (0 to 100) a retrained version may lose against the current one "
        "and still go live.",
        float,
        at_least=0,
        at_most=100,
    )
    promote_min_accuracy: float = _setting(
        "POETS_PROMOTE_MIN_ACCURACY",
        0.0,
        "Accuracy (0 to 1) a retrained version needs to go live, whatever the current one scores.",
        float,
        at_least=0,
        at_most=1,
    )
    webhook_urls: Tuple[str, ...] = _setting(
        "POETS_WEBHOOK_URLS",
        (),
        "Comma-separated http(s) URLs that get a signed JSON POST for job.succeeded, job.failed, "
        "version.promoted, version.held and drift.alert.",
        _parse_webhook_urls,
    )
    webhook_secret: Optional[str] = _setting(
        "POETS_WEBHOOK_SECRET",
        None,
        "Key of the X-Poets-Signature header (sha256=HMAC-SHA256 of the body). Unset: unsigned.",
        _parse_optional_str,
    )
    webhook_timeout_s: float = _setting(
        "POETS_WEBHOOK_TIMEOUT_S",
        5.0,
        "Longest wait for a webhook receiver's answer; a slower one counts as a failed attempt.",
        float,
        at_least=0.1,
        at_most=300,
    )
    webhook_max_attempts: int = _setting(
        "POETS_WEBHOOK_MAX_ATTEMPTS",
        8,
        "Attempts per webhook delivery, with back-off doubling from 2 s (at most 10 min apart).",
        int,
        at_least=1,
        at_most=100,
    )
    drift_window: int = _setting(
        "POETS_DRIFT_WINDOW",
        1000,
        "Answers per served version that drift is measured on (the most recent ones).",
        int,
        at_least=10,
        at_most=1000000,
    )
    drift_min_answers: int = _setting(
        "POETS_DRIFT_MIN_ANSWERS",
        200,
        "Answers a version needs in its window before its drift is reported.",
        int,
        at_least=1,
    )
    drift_alert_psi: float = _setting(
        "POETS_DRIFT_ALERT_PSI",
        0.25,
        "Drift (population stability index) over which a drift.alert is sent; 0.1-0.25 is "
        "usually read as a moderate shift, over 0.25 as a real one.",
        float,
        at_least=0.01,
    )
    policy_check_s: float = _setting(
        "POETS_POLICY_CHECK_S",
        30.0,
        "How often the scheduler (Celery beat) checks the retrain policies.",
        float,
        at_least=1,
        at_most=3600,
    )

    def __post_init__(self) -> None:
        """Refuse out-of-range numbers once, here, so no caller has to clamp them.

        Raises:
            ValueError: a setting is out of its range, naming the variable and the range.
        """
        for spec in fields(self):
            _check_range(
                spec.metadata["env"],
                getattr(self, spec.name),
                spec.metadata["at_least"],
                spec.metadata["at_most"],
            )

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every ``POETS_*`` variable; unset ones keep their defaults.

        Raises:
            ValueError: a variable holds a value of the wrong type or out of its range, naming
                the variable (and the range).
        """
        environ = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.metadata["env"]
            if name not in environ:
                continue
            parse = spec.metadata["parse"] or str
            try:
                values[spec.name] = parse(environ[name])
            except ValueError as exc:
                raise ValueError("{}={!r}: {}".format(name, environ[name], exc)) from exc
        return cls(**values)

    @classmethod
    def describe(cls) -> List[Tuple[str, str, str]]:
        """(variable, default, meaning) for every setting, for the README's table."""
        rows = []
        for spec in fields(cls):
            default = spec.default
            if callable(spec.default_factory):
                default = spec.default_factory()
            rows.append((spec.metadata["env"], _shown(default), spec.metadata["help"]))
        return rows

    def effective(self) -> List[Tuple[str, str, str]]:
        """(variable, value in effect, meaning) for every setting, for ``poets settings``.

        API keys are shown as a count, never in clear.
        """
        rows = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            shown = "{} key(s)".format(len(value)) if spec.name == "api_keys" else _shown(value)
            rows.append((spec.metadata["env"], shown, spec.metadata["help"]))
        return rows

    # Derived locations: one place decides the layout under $POETS_HOME.
    @property
    def store_dir(self) -> Path:
        """The local model store; with an s3:// store, this machine's cache of its versions."""
        if self.store_bucket is not None:
            return self.home / "store-cache"
        if self.store_url:
            return Path(self.store_url).expanduser()
        return self.model_dir or self.home / "models"

    @property
    def store_bucket(self) -> Optional[str]:
        """The s3:// URL of the shared store, or None for a local one."""
        url = self.store_url
        return url if url is not None and url.startswith("s3://") else None

    @property
    def cache_dir(self) -> Path:
        return self.home / "bottlenecks"

    @property
    def jobs_db(self) -> Path:
        return self.home / "jobs.sqlite3"

    @property
    def webhooks_db(self) -> Path:
        return self.home / "webhooks.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def logs_dir(self) -> Path:
        return self.tensorboard_dir or self.home / "logs"

    @property
    def datasets_root(self) -> Path:
        return self.datasets_dir or self.data_root or self.home / "datasets"

    @property
    def inbox_dir(self) -> Path:
        return self.home / "inbox"

    @property
    def thumbnails_dir(self) -> Path:
        return self.home / "thumbnails"

    @property
    def celery_broker_url(self) -> str:
        """The broker Celery connects to: Redis when configured, else SQLite on local disk."""
        return self.broker_url or "sqla+sqlite:///{}".format(self.broker_dir / "broker.sqlite3")

    @property
    def celery_result_backend(self) -> str:
        return self.broker_url or "db+sqlite:///{}".format(self.broker_dir / "results.sqlite3")

    def celery_config(self) -> Dict[str, Any]:
        """Celery settings shared by the API (which only sends) and the worker.

        Long jobs: acknowledge late and requeue when a worker dies, one job at a
        time per worker process, and a visibility timeout longer than any job so
        Redis does not hand a running job to a second worker. JSON only, no pickle.
        """
        config: Dict[str, Any] = {
            "broker_url": self.celery_broker_url,
            "result_backend": self.celery_result_backend,
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "task_track_started": True,
            "task_default_queue": "poets",
            "result_expires": 7 * 24 * 3600,
        }
        if self.uses_redis:
            # Only Redis redelivers by visibility timeout; kombu's SQLAlchemy transport
            # passes transport options to create_engine(), which refuses this one.
            config["broker_transport_options"] = {"visibility_timeout": self.job_visibility_timeout_s}
        return config

    @property
    def uses_redis(self) -> bool:
        return bool(self.broker_url) and str(self.broker_url).startswith(("redis://", "rediss://"))
