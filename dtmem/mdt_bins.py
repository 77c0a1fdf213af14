"""MDT's return discretisation, in one place for the model and the data (pure constants, no
imports): integer returns-to-go (rewards clipped to their sign, then summed) clipped to
[RETURN_MIN, RETURN_MAX] and shifted by -RETURN_MIN into RETURN_BINS bins."""

from __future__ import annotations

__all__ = ["RETURN_BINS", "RETURN_MAX", "RETURN_MIN"]

RETURN_MIN = -20  # the return of bin 0
RETURN_MAX = 99  # the return of the last bin
RETURN_BINS = RETURN_MAX - RETURN_MIN + 1  # 120
