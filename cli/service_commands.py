"""``poets serve``, ``poets worker`` and ``poets up``."""

from typing import Any


def register(commands: Any) -> None:
    pass
