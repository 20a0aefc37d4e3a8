"""The command line: ingest flags derived from ``IngestOptions``; thin job entry points."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stlake import cli
from stlake.ingestion.options import DEFAULT_MEMORY_BUDGET, IngestOptions
from stlake.ingestion.readers import layout_names

ROOT = Path(__file__).resolve().parents[1]


def parse_ingest(*flags: str) -> IngestOptions:
    return cli.options_from_args(cli.build_parser().parse_args(["ingest", "--source", "src", *flags]))


def test_ingest_defaults_are_the_options_defaults():
    assert parse_ingest() == IngestOptions(source="src")


def test_every_ingest_option_has_a_flag_with_help():
    ingest = cli.build_parser()._subparsers._group_actions[0].choices["ingest"]
    by_dest = {action.dest: action for action in ingest._actions}
    for field in dataclasses.fields(IngestOptions):
        assert field.name in by_dest, field.name
        assert by_dest[field.name].help, field.name


def test_ingest_flags_parse_into_options():
    options = parse_ingest("--lake", "s3://b/l", "--resize", "224", "--border", "drop", "--memory-budget", "512M",
                           "--expr-chunk", "1G", "--bin-size", "16", "--all-spots", "--layout", "st",
                           "--layout", "visium")
    assert (options.lake, options.resize_px, options.border) == ("s3://b/l", 224, "drop")
    assert (options.memory_budget, options.expr_chunk_bytes) == (512 << 20, 1 << 30)
    assert (options.bin_size_um, options.in_tissue_only, options.layouts) == (16, False, ("st", "visium"))
    with pytest.raises(SystemExit):
        parse_ingest("--border", "mirror")
    with pytest.raises(SystemExit):
        parse_ingest("--layout", "xenium")


def test_help_shows_defaults_and_the_registered_layouts(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {cli.format_size(DEFAULT_MEMORY_BUDGET)})" in text and "(default: ./lake)" in text
    assert "{" + ",".join(layout_names()) + "}" in text


def test_sizes_round_trip():
    for text, size in (("4G", 4 << 30), ("512M", 512 << 20), ("64k", 64 << 10), ("1000", 1000)):
        assert cli.parse_size(text) == size
    assert cli.format_size(4 << 30) == "4G" and cli.format_size(1000) == "1000"


JOBS = {"ingest.py": "ingest", "build_pairs.py": "pairs", "compute_hvg.py": "hvg", "train_clip.py": "train"}


@pytest.mark.parametrize("script", sorted(JOBS))
def test_jobs_are_thin_entry_points_of_the_cli(script):
    """Every job calls ``stlake.cli.main`` with its command, and nothing else."""
    source = (ROOT / "jobs" / script).read_text()
    code = re.sub(r'^""".*?"""\n', "", source, flags=re.S).strip()
    assert code == ("import sys\n\nfrom stlake.cli import main\n\nif __name__ == \"__main__\":\n"
                    f"    sys.exit(main([\"{JOBS[script]}\", *sys.argv[1:]]))")
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=str(ROOT / "jobs"))
    assert result.returncode == 0, result.stderr
    assert "--lake" in result.stdout
