"""The engine's exception tree.

Every error the engine raises on purpose is a :class:`PoetsError`. Each carries a
stable machine-readable ``code`` and a ``detail`` that tells the user what to fix.
The HTTP layer maps the subclasses to status codes in one place
(``app/errors.py``); the CLI prints ``detail`` and exits non-zero.
"""


class PoetsError(Exception):
    """Base of every error Poets raises deliberately."""

    code = "poets_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(PoetsError):
    """The caller sent something unusable (an image, a parameter, a dataset)."""

    code = "invalid_input"


class InvalidImage(InvalidInput):
    """Bytes that are not a decodable image, or one over the pixel limit."""

    code = "invalid_image"


class InvalidDataset(InvalidInput):
    """A training set that cannot be trained on (too few classes, empty class...)."""

    code = "invalid_dataset"


class UnsupportedExport(InvalidInput):
    """An export format that cannot be written for this model or installation."""

    code = "unsupported_export"


class InvalidArchive(InvalidInput):
    """An uploaded dataset archive that is corrupt, unsafe or over the limits."""

    code = "invalid_archive"


class TooLarge(InvalidInput):
    """An upload over the configured size limit."""

    code = "too_large"


class UnsupportedMediaType(InvalidInput):
    """A request body in a content type Poets does not read."""

    code = "unsupported_media_type"


class Forbidden(PoetsError):
    """A request for something the caller may not touch (e.g. outside the data root)."""

    code = "forbidden"


class CrossSiteRequest(Forbidden):
    """A state-changing request sent by a page of another site (its Origin or Referer)."""

    code = "cross_site_request"


class HostNotAllowed(PoetsError):
    """A request whose Host header is neither an IP address nor an allowed name."""

    code = "host_not_allowed"


class Unauthorized(PoetsError):
    """A missing or wrong API key."""

    code = "unauthorized"


class NotFound(PoetsError):
    """A job, model or version that does not exist."""

    code = "not_found"


class Conflict(PoetsError):
    """A request that conflicts with the current state (e.g. cancelling a finished job)."""

    code = "conflict"


class Unavailable(PoetsError):
    """Something needed right now is not there yet: no model loaded, broker down."""

    code = "unavailable"


class NoModel(Unavailable):
    """No model is loaded to answer ``/label``."""

    code = "no_model"


class ModelLoading(Unavailable):
    """The model asked for is being loaded (again): retry in a few seconds."""

    code = "model_loading"


class BodyTimeout(PoetsError):
    """The client did not send its request body within the deadline (a slow client)."""

    code = "request_timeout"


class BackboneUnavailable(PoetsError):
    """Backbone weights are neither on disk nor downloadable."""

    code = "backbone_unavailable"


class ModelLoadError(PoetsError):
    """A published model version could not be loaded."""

    code = "model_load_error"


class IncompatibleModel(ModelLoadError):
    """A version whose formats need a newer TensorFlow than the one running (see poets.json)."""

    code = "incompatible_model"


class Cancelled(PoetsError):
    """A job was cancelled by its owner; nothing was published."""

    code = "cancelled"


class StoreUnavailable(Unavailable):
    """Poets' storage (model store, $POETS_HOME) cannot be written: read-only or not permitted."""

    code = "store_unavailable"


class InsufficientStorage(PoetsError):
    """The filesystem holding Poets' storage is full."""

    code = "insufficient_storage"


class ConfigurationError(PoetsError):
    """Settings that cannot work together (e.g. a key required but none configured): refuse to start."""

    code = "configuration_error"


class DatasetFull(Conflict):
    """Adding the images would take a dataset past POETS_DATASET_MAX_IMAGES or POETS_DATASET_MAX_BYTES."""

    code = "dataset_full"
