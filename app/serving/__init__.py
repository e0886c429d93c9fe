"""The serving runtime: the registry of loaded versions (``registry.py``), a served
version (``served_model.py``: decode, batch, rank) and its dynamic batcher (``batching.py``)."""
