"""The serving runtime: the registry of loaded versions (``registry.py``), loading one version
and remembering failures (``loading.py``), following the model store (``follower.py``), a served
version (``served_model.py``: decode, batch, rank) and its dynamic batcher (``batching.py``)."""
