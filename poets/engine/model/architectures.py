"""The backbones Poets knows: TensorFlow for Poets' architecture names and their facts."""

from dataclasses import dataclass
from typing import Dict, List

from poets.engine.errors import InvalidInput

BOTTLENECKS = ("prelogits", "logits")

_HUB = "https://tfhub.dev/google/imagenet/{model}/{kind}/5"


@dataclass(frozen=True)
class Architecture:
    """One backbone: its input, its normalisation and where its tensors are.

    The tensor names are those of the TF-slim frozen graphs that TensorFlow for
    Poets downloads; ``mean``/``std`` are the normalisation those graphs expect.
    """

    name: str
    family: str
    size: int
    width: float
    mean: float
    std: float
    input_tensor: str
    prelogits_tensor: str
    logits_tensor: str
    prelogits_dim: int
    logits_dim: int

    def feature_dim(self, bottleneck: str) -> int:
        return self.prelogits_dim if bottleneck == "prelogits" else self.logits_dim

    def hub_handle(self, bottleneck: str) -> str:
        """The TF Hub module with this backbone's weights (inputs in [0, 1])."""
        kind = "feature_vector" if bottleneck == "prelogits" else "classification"
        if self.family == "inception_v3":
            model = "inception_v3"
        else:
            model = "mobilenet_v1_{:03d}_{}".format(round(self.width * 100), self.size)
        return _HUB.format(model=model, kind=kind)


def _mobilenet(width: str, size: int) -> Architecture:
    return Architecture(
        name="mobilenet_{}_{}".format(width, size),
        family="mobilenet",
        size=size,
        width=float(width),
        mean=127.5,
        std=127.5,
        input_tensor="input:0",
        prelogits_tensor="MobilenetV1/Logits/AvgPool_1a/AvgPool:0",
        logits_tensor="MobilenetV1/Predictions/Reshape:0",
        prelogits_dim=int(1024 * float(width)),
        logits_dim=1001,
    )


# poets' classify_image_graph_def.pb: pool_3 is batch-agnostic, pool_3/_reshape is not.
INCEPTION_V3 = Architecture(
    name="inception_v3",
    family="inception_v3",
    size=299,
    width=1.0,
    mean=128.0,
    std=128.0,
    input_tensor="Mul:0",
    prelogits_tensor="pool_3:0",
    logits_tensor="softmax/logits:0",
    prelogits_dim=2048,
    logits_dim=1008,
)

ARCHITECTURES: Dict[str, Architecture] = {INCEPTION_V3.name: INCEPTION_V3}
for _width in ("1.0", "0.75", "0.50", "0.25"):
    for _size in (224, 192, 160, 128):
        _arch = _mobilenet(_width, _size)
        ARCHITECTURES[_arch.name] = _arch


def names() -> List[str]:
    return sorted(ARCHITECTURES)


def get(name: str) -> Architecture:
    """Look an architecture up by its TensorFlow for Poets name.

    ``mobilenet_0.5_224`` is accepted for ``mobilenet_0.50_224``.

    Raises:
        InvalidInput: unknown name; the message lists the valid ones.
    """
    key = name.strip().lower()
    if key.startswith("mobilenet_0.5_"):
        key = key.replace("mobilenet_0.5_", "mobilenet_0.50_", 1)
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    raise InvalidInput("Unknown architecture {!r}: use one of {}.".format(name, ", ".join(names())))
