"""Legacy Spatial Transcriptomics counts (``st_tsv``): a tab-separated spots x genes table, often gzipped.

Rows are spots named ``{x}x{y}`` (array position), columns are genes. The same delimited-text
matrix as a dense CSV (:mod:`.text`, :mod:`.text_parse`: byte ranges and a vectorised parser instead
of pandas, for bounded memory and speed) with a tab as its default separator.
"""
from stlake.ingestion.matrices.text import delimited_format

SEP = "\t"  # default field separator

FORMAT = delimited_format("st_tsv", SEP)
