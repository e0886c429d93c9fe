"""The Poets HTTP service (FastAPI). Build it with :func:`app.main.create_app`."""
