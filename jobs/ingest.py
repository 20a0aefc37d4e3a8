"""spark-submit entry point: raw slides -> the lake's Delta tables.

spark-submit jobs/ingest.py --source s3://bucket/raw --lake s3://bucket/lake [--resize 224 ...]
"""
import sys

from stlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
