"""Example Spark SQL over the lake (shown in README, run by ``make demo`` and by the tests)."""
from __future__ import annotations

SPOTS_PER_TISSUE_AND_TECHNOLOGY = """
SELECT s.tissue, s.technology, COUNT(*) AS spots, COUNT(DISTINCT s.slide_id) AS slides
FROM spots p JOIN slides s USING (slide_id)
GROUP BY s.tissue, s.technology
ORDER BY spots DESC
"""

TOP_GENES_OF_SLIDE = """
WITH nonzero AS (
  SELECT inline(arrays_zip(gene_ids, counts)) FROM expression WHERE slide_id = '{slide_id}'
)
SELECT g.symbol, g.gene_key, SUM(nonzero.counts) AS total_counts, COUNT(*) AS spots_detected
FROM nonzero JOIN genes g ON g.gene_id = nonzero.gene_ids
GROUP BY g.symbol, g.gene_key
ORDER BY total_counts DESC
LIMIT {limit}
"""

TILES_OF_LABEL = """
SELECT slide_id, spot_id, tile_format, tile_width, tile_height, length(tile) AS tile_bytes,
       ROUND(tissue_fraction, 2) AS tissue_fraction
FROM spots
WHERE label = '{label}'
ORDER BY slide_id, spot_id
LIMIT {limit}
"""

LABEL_COUNTS = """
SELECT label, COUNT(*) AS spots FROM annotations GROUP BY label ORDER BY spots DESC
"""

REJECTS = """
SELECT slide_id, severity, reason, substring(detail, 1, 80) AS detail FROM rejects
ORDER BY severity, slide_id
"""
