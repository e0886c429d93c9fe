"""Polling, for tests that wait on real processes (never a bare sleep)."""

import time
from typing import Any, Callable

import pytest


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("{} not seen within {:.0f} s".format(what, timeout))
        time.sleep(interval)
