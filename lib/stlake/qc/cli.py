"""``stlake qc`` (registered into :mod:`stlake.cli` by ``register``)."""
from __future__ import annotations

import argparse
import sys

#: Exit status when the lake or the slide is missing (nothing was written).
EXIT_NOT_FOUND = 3


def cmd_qc(args: argparse.Namespace) -> int:
    """Write the QC PNGs and print their paths."""
    from stlake.lake.upkeep import existing_tables
    from stlake.qc.data import NoSuchSlide
    from stlake.qc.report import write_qc
    if "slides" not in existing_tables(args.lake):
        print(f"stlake qc: no lake at {args.lake} (no `slides` table; run `stlake ingest --lake ...` first)",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        paths = write_qc(args.lake, args.slide, args.out, seed=args.seed)
    except NoSuchSlide as error:
        print(f"stlake qc: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    for path in paths:
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``qc`` to the ``stlake`` command line."""
    qc = sub.add_parser("qc", help="PNGs of a slide (spots on the thumbnail, tiles, counts) and of the rejects",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    qc.add_argument("--lake", default="./lake", help="the lake folder or s3:// URI")
    qc.add_argument("--slide", help="slide id to draw (default: only the rejects pages)")
    qc.add_argument("--out", default="qc", help="folder for the PNGs (created)")
    qc.add_argument("--seed", type=int, default=0, help="seed of the random tiles shown")
    qc.set_defaults(run=cmd_qc)
