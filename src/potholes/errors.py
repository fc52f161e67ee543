"""The one base class of mistakes a user can fix: a bad parameter, bad data, a missing
prerequisite. The CLI answers these with one message and exit status 2; any other exception is
a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave; the message names it, what was given and what was expected."""


class ConfigError(UserError, ValueError):
    """An invalid parameter; the message names it, the value given and what was expected."""


class ParamError(UserError, ValueError):
    """A bad inference param of a request or a command (``threshold``, ``min_area``, ``runtime``)."""

    def __init__(self, name: str, value, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"param '{name}': got {value!r}, expected {expected}")


def raise_all(problems: list[str], what: str) -> None:
    """Raise one ConfigError holding every problem found in ``what`` (nothing when there are none):
    the message alone when there is one, else a count and one line each, listed as DatasetError
    lists a dataset's problems."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("\n  - ".join([f"{len(problems)} problems in the {what}:", *problems]))
