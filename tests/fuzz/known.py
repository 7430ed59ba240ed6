"""What a 5xx was: the exception the server logged for it, and the list of known, unfixed ones.

A 500 is logged with its exception by the /v1 gateway (`tokios.gateway`) and by Django for every
other view (`django.request`); `ServerErrors` collects those records while a request runs, so a
failing example names its exception and the last frame of its traceback.

KNOWN_FAILURES lists the 5xx classes found and not fixed yet, each with the explicit regression
example in the fuzz tests (marked xfail, strict). The property tests accept a 500 only when its
exception matches one of these exactly (type, file and function of the last frame, message);
anything else fails the test. Delete an entry (and the xfail mark of its example) once it is fixed.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerError:
    exception: BaseException
    file: str
    function: str
    line: int

    def __str__(self) -> str:
        return (
            f"{type(self.exception).__name__}: {self.exception} (last frame {self.file}:{self.line} in {self.function})"
        )


@dataclass(frozen=True)
class KnownFailure:
    name: str
    exception: type[BaseException]
    file: str  # the last frame's file, relative to the repository or site-packages
    function: str
    message: str = ""  # a fragment of the exception's message

    def matches(self, error: ServerError) -> bool:
        return (
            isinstance(error.exception, self.exception)
            and error.file.endswith(self.file)
            and error.function == self.function
            and self.message in str(error.exception)
        )


# Found by these fuzzers, not fixed yet (none at present). Each has a regression example marked
# xfail(strict=True) in test_v1_fuzz.py or test_dashboard_fuzz.py (which also holds the API usage
# endpoint's): remove the entry and the mark together.
KNOWN_FAILURES: list[KnownFailure] = []


def known(error: ServerError) -> KnownFailure | None:
    return next((k for k in KNOWN_FAILURES if k.matches(error)), None)


class ServerErrors(logging.Handler):
    """Collects the exceptions logged for 5xx answers while it is installed (a context manager)."""

    LOGGERS = ("tokios.gateway", "django.request")

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[ServerError] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info or record.exc_info[1] is None:
            return
        exception = record.exc_info[1]
        frame = traceback.extract_tb(exception.__traceback__)[-1]
        self.errors.append(ServerError(exception, frame.filename, frame.name, frame.lineno or 0))

    def __enter__(self) -> ServerErrors:
        self.errors.clear()
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def describe(self) -> str:
        return "; ".join(map(str, self.errors)) or "no exception was logged"

    def all_known(self) -> KnownFailure | None:
        """The known failure behind this 5xx, if every exception logged is one."""
        found = [known(e) for e in self.errors]
        return found[0] if found and all(found) else None
