"""spark-submit entry point: top-k highly variable genes per species -> ``gene_panels`` (panel ``hvg{k}``).

spark-submit jobs/compute_hvg.py --lake s3://bucket/lake --k 256
"""
import sys

from stlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["hvg", *sys.argv[1:]]))
