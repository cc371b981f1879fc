"""Option types shared by the shell commands."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf``.

    ``click.FloatRange`` lets ``nan`` through (every comparison with it is false), and
    ``inf`` where the range is open above; neither is a usable bitrate, hour count or rate.
    """

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number
