"""CosFace margin."""

from __future__ import annotations

import pytest

from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    target_value,
)


def test_cosface_closed_form() -> None:
    assert target_value(lambda c, y: LF.cosface_logits(c, y, 0.35), 0.8) == pytest.approx(0.45)
    assert target_value(lambda c, y: LF.cosface_logits(c, y, 0.4), -1.0) == pytest.approx(-1.4)
