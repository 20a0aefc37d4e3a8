"""Dense count tables (``dense_csv``): rows = spots (first field = spot id), columns = genes, comma separated.

The STimage release's ``*_count.csv`` files and any dense spots x genes table. Option ``sep`` picks
another separator (e.g. ``;``). Header, chunking and parsing are those of every delimited-text matrix
(:mod:`.text`, :mod:`.text_parse`: byte ranges and a vectorised parser instead of pandas, for bounded
memory and speed).
"""
from stlake.ingestion.matrices.text import delimited_format

SEP = ","  # default field separator

FORMAT = delimited_format("dense_csv", SEP)
