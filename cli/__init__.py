"""The ``poets`` command line."""
