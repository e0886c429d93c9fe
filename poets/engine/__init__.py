"""The ML engine: plain Python + TensorFlow. Imports neither FastAPI nor Celery.

* ``data``: datasets (the poets layout and split), images (the one decode path), archives;
* ``model``: architectures, backbones, the bottleneck cache, training the head;
* ``export``: SavedModel, TensorFlow for Poets graph, TFLite;
* ``store``: the model store and job records;
* ``predictor`` (a loaded version), ``retrain`` (end to end), ``graph_import`` (``poets import``),
  ``settings``, ``errors``.
"""
