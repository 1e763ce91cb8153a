"""Which epoch becomes `best.ckpt`: a higher validation metric, or an equal one with a lower validation
loss. On a small validation set accuracy saturates within a few epochs; keeping the first epoch that
reached it gave an under-trained `best` (seen as a flaky evaluation in CI)."""

from __future__ import annotations

import math

import pytest

from ray_jobs.core.fit import is_better


@pytest.mark.parametrize(
    ("metric", "loss", "best_metric", "best_loss", "expected"),
    [
        (0.5, 0.7, None, None, True),  # the first epoch is the best so far
        (0.75, 0.9, 0.5, 0.1, True),  # a higher metric wins whatever its loss
        (0.5, 0.1, 0.75, 0.9, False),  # a lower metric loses whatever its loss
        (1.0, 0.2, 1.0, 0.4, True),  # equal metric, lower loss: the better-trained epoch
        (1.0, 0.4, 1.0, 0.2, False),  # equal metric, higher loss
        (1.0, 0.2, 1.0, 0.2, False),  # a full tie keeps the earlier epoch
        (1.0, None, 1.0, 0.2, False),  # no loss logged: ties keep the earlier epoch
        (1.0, math.nan, 1.0, 0.2, False),
        (1.0, 0.3, 1.0, None, True),  # the best epoch logged no loss
        (math.nan, 0.1, None, None, False),  # NaN never wins, not even first
        (math.nan, 0.1, 0.2, 0.5, False),
    ],
)
def test_best_epoch_choice(metric, loss, best_metric, best_loss, expected):
    assert is_better(metric, loss, best_metric, best_loss) is expected
