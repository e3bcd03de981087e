"""The alpha-cap schedule: which caps the candidate search tries, in order.

Shapes inside the jitted search depend on the number of caps, so the schedule
is computed here, in Python, once per selector.
"""
import math

import numpy as np


def reference_caps(step: float) -> np.ndarray:
    """The original's schedule: `cap += step` in float64 while `cap < 1.0`.

    Kept for `compat="reference"` only: the accumulation drifts (step 0.1
    gives 11 caps, the last about 1.1) and can exceed 1 (defect Q4).
    """
    caps, cap = [], 0.0
    while cap < 1.0:
        cap += step
        caps.append(cap)
    return np.asarray(caps, dtype=np.float64)


def exact_caps(step: float) -> np.ndarray:
    """Caps `k * step` for k = 1, 2, ..., ending exactly at 1.0.

    Each cap is a product, not a running sum, so there is no drift, and the
    last cap is clipped to 1.0 so a mix never passes its anchor (fixes Q4).
    """
    count = max(1, math.ceil(1.0 / step - 1e-9))
    caps = np.minimum(step * np.arange(1, count + 1, dtype=np.float64), 1.0)
    caps[-1] = 1.0
    return caps


def make_caps(step: float, compat: str) -> np.ndarray:
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"alpha_cap_step must be a finite number > 0, got {step!r}")
    if compat == "reference":
        return reference_caps(float(step))
    if compat == "default":
        return exact_caps(float(step))
    raise ValueError(f"compat must be 'default' or 'reference', got {compat!r}")
