"""The score temperature a recipe may leave unset (STAR, ADORE): resolved from the encoder at set-up.

Scores are ``q . d / temperature``. An encoder that L2-normalises its embeddings scores cosines in [-1, 1],
whose softmax / RankNet margins at temperature 1 cannot exceed 2: such a model barely learns, so it takes
0.05 (the usual contrastive temperature, e.g. Contriever's and sentence-transformers'). Otherwise the scores
are raw inner products, as DRhard's RoBERTa's, and the temperature is 1 (DRhard has none).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NORMALIZED = 0.05  # the temperature of an L2-normalising encoder (cosine scores)
RAW = 1.0  # raw inner products (DRhard)


def resolve_temperature(value: float | None, encoder, method: str) -> float:
    """``value`` when the recipe sets it, else 0.05 for an encoder whose ``config.normalize`` is on and 1.0
    otherwise; the choice is logged."""
    if value is not None:
        log.info("%s: temperature %g (from the recipe)", method, value)
        return float(value)
    normalize = bool(encoder.config.normalize)
    chosen = NORMALIZED if normalize else RAW
    log.info("%s: temperature %g (auto: the encoder %s its embeddings)", method, chosen,
             "L2-normalises" if normalize else "does not normalise")
    return chosen
