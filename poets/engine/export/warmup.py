"""TF Serving warm-up records: ``assets.extra/tf_serving_warmup_requests`` in a SavedModel.

TF Serving replays these ``PredictionLog`` records when it loads a version, so its first
real requests do not pay for graph initialisation (tensorflow/serving#385). The file is a
TFRecord file of serialised ``tensorflow.serving.PredictionLog`` messages; each holds a
``PredictRequest`` for one signature. There are :data:`BATCH_SIZES` records per signature:
a mid-grey image of the model's size (as a JPEG for ``images``, as pixels for the
``uint8`` inputs).

The messages are encoded here field by field (protobuf's wire format; field numbers from
tensorflow_serving/apis/prediction_log.proto, predict.proto and model.proto), so exporting
needs no tensorflow-serving-api, whose wheels pin one TensorFlow release and none exist for
Python 3.6. The tests parse the file with tensorflow-serving-api's own classes.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

FOLDER = "assets.extra"
FILE = "tf_serving_warmup_requests"
BATCH_SIZES = (1, 2)
GREY = 128


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature: str, inputs: Dict[str, Any]) -> bytes:
    """A serialised ``PredictionLog`` whose ``predict_log.request`` runs ``signature``.

    Args:
        inputs: input key to a ``tensorflow.TensorProto``.
    """
    model_spec = _field(1, model_name.encode("utf-8")) + _field(3, signature.encode("utf-8"))
    request = _field(1, model_spec)  # PredictRequest.model_spec = 1
    for key in sorted(inputs):  # PredictRequest.inputs = 2, map entries: key = 1, value = 2
        entry = _field(1, key.encode("utf-8")) + _field(2, inputs[key].SerializeToString())
        request += _field(2, entry)
    predict_log = _field(1, request)  # PredictLog.request = 1
    return _field(6, predict_log)  # PredictionLog.predict_log = 6


def _example_input(tensor_info: Any, batch: int, size: int) -> Optional[Any]:
    """A TensorProto for one signature input, or None for an input we cannot fill."""
    dims = [d.size for d in tensor_info.tensor_shape.dim]
    grey = np.full((size, size, 3), GREY, np.uint8)
    if tensor_info.dtype == tf.string.as_datatype_enum and len(dims) == 1:
        jpeg = tf.io.encode_jpeg(tf.constant(grey)).numpy()
        return tf.make_tensor_proto([jpeg] * batch, dtype=tf.string)
    if len(dims) == 4 and dims[1:] == [size, size, 3]:
        dtype = tf.dtypes.as_dtype(tensor_info.dtype)
        return tf.make_tensor_proto(np.repeat(grey[np.newaxis], batch, axis=0).astype(dtype.as_numpy_dtype))
    return None


def records(signature_defs: Dict[str, Any], model_name: str, size: int) -> List[bytes]:
    """The warm-up records for every signature whose inputs can be filled."""
    found = []
    for key in sorted(signature_defs):
        signature = signature_defs[key]
        for batch in BATCH_SIZES:
            inputs = {name: _example_input(info, batch, size) for name, info in signature.inputs.items()}
            if all(value is not None for value in inputs.values()):
                found.append(prediction_log(model_name, key, inputs))
    return found


def write(saved_model_dir: Path, model_name: str, size: int) -> Path:
    """Write the warm-up file of the SavedModel in ``saved_model_dir``; returns its path."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    signature_defs = dict(saved_model.meta_graphs[0].signature_def)
    path = saved_model_dir / FOLDER / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records(signature_defs, model_name, size):
            writer.write(record)
    return path
