"""Inference parameters (``threshold``, ``min_area``, ``runtime``) and their errors.

A bad parameter is the caller's mistake in one named value, not a dataset problem, so it has its
own error type whose message names the parameter, the value given and what is expected.
"""

from __future__ import annotations

import math

from potholes.errors import ParamError  # noqa: F401  (raised here; the request layer answers it with HTTP 400)


def check_threshold(value) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParamError("threshold", value, "a number strictly between 0 and 1") from None
    if not (math.isfinite(number) and 0 < number < 1):
        raise ParamError("threshold", value, "a number strictly between 0 and 1")
    return number


def check_min_area(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError("min_area", value, "a whole number of pixels >= 0 (at the model's size)")
    try:
        number = float(value)
    except ValueError:
        raise ParamError("min_area", value, "a whole number of pixels >= 0 (at the model's size)") from None
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise ParamError("min_area", value, "a whole number of pixels >= 0 (at the model's size)")
    return int(number)
