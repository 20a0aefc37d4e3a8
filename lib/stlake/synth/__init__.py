"""Synthetic spatial-transcriptomics slides in the four input layouts, with exact ground truth.

``generate(out_dir, size="small"|"full", seed, layouts, corrupt)`` (:mod:`stlake.synth.dataset`) writes
an STimage-1K4M release, two Space Ranger Visium slides, a VisiumHD slide and a legacy ST slide (one
writer per layout, :mod:`stlake.synth.writers`), ``manifest.csv`` and ``truth/{slide_id}.npz`` (read
back with :func:`load_truth`). Dataset dimensions are in :mod:`stlake.synth.specs`.

Images are H&E-like (glass, an irregular tissue blob, four tissue domains with their own colour, nuclei
and expression program). Every spot centre carries a 14-px binary marker of the spot's code
(:func:`marker_patch`, :func:`decode_marker`, :func:`locate_marker`), so a test can prove that a tile was
cut at the right place to the pixel.
"""
from stlake.synth.dataset import LAYOUTS, generate
from stlake.synth.expression import GeneUniverse, gene_universe
from stlake.synth.image import DOMAINS, Renderer, Scene
from stlake.synth.imagefiles import STREAM_PNG_PIXELS, write_png_stream
from stlake.synth.markers import MARKER_HALF, MARKER_SIDE, decode_marker, locate_marker, marker_patch
from stlake.synth.specs import CORRUPT_SLIDES, SIZES, Sizes, StimageSpec, get_sizes
from stlake.synth.truth import Truth, load_truth, truth_path
from stlake.synth.writers import WRITERS
from stlake.synth.writers.stimage import generate_stimage_slide

__all__ = [
    "CORRUPT_SLIDES", "DOMAINS", "GeneUniverse", "LAYOUTS", "MARKER_HALF", "MARKER_SIDE", "Renderer", "SIZES",
    "STREAM_PNG_PIXELS", "Scene", "Sizes", "StimageSpec", "Truth", "WRITERS", "decode_marker", "gene_universe",
    "generate", "generate_stimage_slide", "get_sizes", "load_truth", "locate_marker", "marker_patch", "truth_path",
    "write_png_stream",
]
