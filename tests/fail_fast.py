"""Expensive module fixtures whose failure is remembered: they run at most once per module, failed or not.

The real-model tests (test_real_models.py) share fixtures that take minutes (loading SmolLM2, pruning it). When one
fails, a pytest-timeout "Timeout >600s" included, each later test that requests it must fail at once, saying that
it shares an earlier failure, rather than pay for the fixture again or read like a timeout of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["FixtureFailedError", "fail_fast_fixture"]


class FixtureFailedError(Exception):
    """A shared fixture failed; every test that requests it reports this error, raised from the first failure."""


def fail_fast_fixture(*, scope: str = "module") -> Callable[[Callable[..., Any]], Any]:
    """`@pytest.fixture(scope=scope)` that runs its body at most once, and fails every request after a failure.

    The first failure (an exception, or pytest's Failed from a timeout; not a skip) is raised as `FixtureFailedError`
    from the original, whose traceback the first report shows; pytest caches that error for the scope, and the
    body itself also refuses to run a second time should the cache ever be reset. A return-style fixture only.
    """

    def decorate(function: Callable[..., Any]) -> Any:
        failures: list[FixtureFailedError] = []

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures[0]
            try:
                return function(*args, **kwargs)
            except pytest.skip.Exception:
                raise
            except (Exception, pytest.fail.Exception) as err:  # pytest-timeout's Failed is not an Exception
                lines = str(err).strip().splitlines()
                failure = FixtureFailedError(
                    f"fixture {function.__name__!r} failed ({type(err).__name__}: {lines[0] if lines else ''}); "
                    "every test that shares it fails with this error, without running it again"
                )
                failures.append(failure)
                raise failure from err

        return pytest.fixture(scope=scope)(guarded)

    return decorate
