"""Poets: image labelling and retraining as a self-hosted service.

``poets.engine`` is the ML (plain Python + TensorFlow, no FastAPI, no Celery); ``poets.cli`` is
the ``poets`` command. The HTTP service is ``app``, the Celery worker ``worker``.
"""
