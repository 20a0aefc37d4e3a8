"""spark-submit entry point: spots ⋈ expression ⋈ slides -> the ``pairs`` training table.

spark-submit jobs/build_pairs.py --lake s3://bucket/lake [--slide ID ...]
"""
import sys

from stlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["pairs", *sys.argv[1:]]))
