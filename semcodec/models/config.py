"""Architecture of the residual codec (layer 1) as data: what a config JSON and a checkpoint's
metadata hold. No torch here, so that the model registry and ``semcodec models`` load at once;
the network itself is :class:`semcodec.models.residual.ResidualCodec`, and the rate knob is
explained in :mod:`semcodec.models.residual`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: How far below the lowest trained level (q = 0) the rate knob extrapolates the gains.
RATE_EXTRAPOLATION_BELOW = 4.0
#: How far above the highest trained level (q = L-1) the rate knob extrapolates the gains.
RATE_EXTRAPOLATION_ABOVE = 2.0
#: Fixed-point denominator of the rate knob in a RES1 payload, which stores ``q · RATE_ONE`` as a signed
#: 16-bit integer: the knob cannot exceed ``RATE_KNOB_MAX`` (just below 8), whatever the levels.
RATE_ONE = 4096
RATE_KNOB_MAX = 32767 / RATE_ONE
#: Spatial context models a config may name.
CONTEXT_MODELS = ("none", "checkerboard")


@dataclass(frozen=True)
class ResidualConfig:
    """Architecture of the residual codec (stored as JSON in every checkpoint)."""

    N: int = 96
    M: int = 128
    #: λ of each gain level (distortion weight on MSE of [0, 255] pixels / 255²), ascending.
    lambdas: tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)
    #: Channels of the semantic prior's hidden layers.
    prior_channels: int = 64
    #: Spatial context of ``y``: "none" (hyperprior only) or "checkerboard" (two passes).
    context: str = "none"

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODELS:
            raise ValueError(f"unknown context model {self.context!r}; known: {', '.join(CONTEXT_MODELS)}")
        if len(self.lambdas) - 1 > RATE_KNOB_MAX:
            raise ValueError(f"{len(self.lambdas)} λ levels: a stream's rate knob reaches at most "
                             f"{RATE_KNOB_MAX:.4f}, so a model has at most {int(RATE_KNOB_MAX) + 1} levels")

    @property
    def levels(self) -> int:
        return len(self.lambdas)

    @property
    def rate_range(self) -> tuple[float, float]:
        """``(q_min, q_max)`` of the continuous rate knob (see :mod:`semcodec.models.residual`)."""
        if self.levels == 1:
            return 0.0, 0.0
        return -RATE_EXTRAPOLATION_BELOW, min(self.levels - 1 + RATE_EXTRAPOLATION_ABOVE, RATE_KNOB_MAX)

    @property
    def quality_range(self) -> tuple[float, float]:
        """The part of the rate range that quality 0–100 spans: up to the highest trained level,
        beyond which bits buy little (size targets may still go there)."""
        return self.rate_range[0], float(self.levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualConfig":
        d = dict(d)
        d["lambdas"] = tuple(d["lambdas"])
        return cls(**d)
