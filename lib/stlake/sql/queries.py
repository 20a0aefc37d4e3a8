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

TILES_OF_SET_LABEL = """
SELECT p.slide_id, p.spot_id, a.raw_label, p.tile_format, length(p.tile) AS tile_bytes,
       ROUND(p.tissue_fraction, 2) AS tissue_fraction
FROM annotations a JOIN spots p USING (slide_id, spot_id)
WHERE a.set = '{set}' AND a.label = '{label}'
ORDER BY p.slide_id, p.spot_id
LIMIT {limit}
"""

LABEL_COUNTS = """
SELECT label, COUNT(*) AS spots FROM spots WHERE label IS NOT NULL GROUP BY label ORDER BY spots DESC, label
"""

LABEL_COUNTS_PER_SLIDE = """
SELECT slide_id, set, label, COUNT(*) AS spots
FROM annotations
GROUP BY slide_id, set, label
ORDER BY slide_id, set, spots DESC, label
"""

LABEL_COUNTS_PER_COHORT = """
SELECT COALESCE(get_json_object(s.meta_json, '$.cohort'), s.tissue, s.technology) AS cohort, a.set, a.label,
       COUNT(*) AS spots, COUNT(DISTINCT a.slide_id) AS slides
FROM annotations a JOIN slides s USING (slide_id)
GROUP BY 1, a.set, a.label
ORDER BY cohort, a.set, spots DESC, a.label
"""

REJECTS = """
SELECT slide_id, severity, reason, substring(detail, 1, 80) AS detail FROM rejects
ORDER BY severity, slide_id
"""
