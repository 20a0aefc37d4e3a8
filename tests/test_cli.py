"""The command line: ingest flags derived from ``IngestOptions``; thin job entry points."""
from __future__ import annotations

import argparse
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
                           "--layout", "visium", "--tile-threads", "3")
    assert (options.lake, options.resize_px, options.border, options.tile_threads) == ("s3://b/l", 224, "drop", 3)
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


# ---------------------------------------------------------------- help, version, errors, exit codes (issue 11)

def all_commands() -> dict[str, argparse.ArgumentParser]:
    """Every ``stlake`` subcommand's parser, registered ones included."""
    return dict(cli.build_parser()._subparsers._group_actions[0].choices)


def test_every_option_of_every_command_has_help_and_shows_its_default():
    for name, parser in all_commands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help, f"stlake {name} {action.option_strings or action.dest}: no help"
            shown = formatter._get_help_string(action)
            has_default = action.option_strings and action.nargs != 0 and action.default not in (None, [], ())
            if has_default:
                assert "default" in shown, f"stlake {name} {action.option_strings}: default not shown"
        text = parser.format_help().split("\n\n", 1)[1]  # after the usage (argparse cannot break a long choice list)
        wide = [line for line in text.splitlines() if len(line) > 100]  # descriptions and help wrapped, no mess
        assert not wide, (name, wide)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.match(r"stlake \S+ \(pyspark 4\.0\.\d+, deltalake \S+, Python 3\.\d+", capsys.readouterr().out)


def test_usage_errors_are_one_line_with_their_own_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ingest", "--source", "x", "--border", "mirror"])
    assert exit_.value.code == cli.EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("stlake ingest: error: argument --border")
    assert cli.main(["stream", "--lake", "x", "--cur-shard", "1"]) == cli.EXIT_USAGE  # options that go together
    assert "cur_shard and shard_count go together" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tables"], ["sql", "SELECT 1"], ["pairs"], ["hvg"], ["stream"]])
def test_a_missing_lake_ends_in_two_lines_before_spark(tmp_path, capsys, argv):
    lake = str(tmp_path / "nowhere")
    assert cli.main([*argv, "--lake", lake]) == cli.EXIT_RUN_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"stlake {argv[0]}: no lake at {lake}",
                     f"  hint: build one with `stlake ingest --source <slides> --lake {lake}`, or fix --lake"]
    (tmp_path / "afile").write_text("x")
    assert cli.main([*argv, "--lake", str(tmp_path / "afile")]) == cli.EXIT_RUN_ERROR
    assert "is a file" in capsys.readouterr().err


def test_tables_of_a_nonexistent_lake_fails_clearly():
    result = subprocess.run([sys.executable, "-m", "stlake.cli", "tables", "--lake", "/nonexistent"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.EXIT_RUN_ERROR and result.stdout == ""
    assert result.stderr.splitlines()[0] == "stlake tables: no lake at /nonexistent"


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise KeyError("boom")
    args = cli.build_parser().parse_args(["tables"])
    args.run = broken
    assert cli.run_command(args) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("stlake tables: unexpected KeyError: 'boom'")
    args.debug = True
    assert cli.run_command(args) == cli.EXIT_FAILED
    assert "Traceback" in capsys.readouterr().err


def test_readme_documents_every_exit_code():
    from stlake import errors
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes"):]
    for code, meaning in errors.EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in section, (code, meaning)


def test_ingest_summary_is_a_short_table():
    from stlake.ingestion.driver import IngestReport
    report = IngestReport(run_id="r1", landed=["a", "b"], rejected={"c": "image_corrupt", "d": "image_corrupt"},
                          rows={"spots": 1200, "expression": 1200}, versions={"expression": 3, "spots": 3, "slides": 2},
                          tasks={}, peak_decoded_bytes={}, seconds=12.34)
    lines = cli.ingest_summary(report).splitlines()
    assert lines[0] == "run r1: 2 landed, 2 rejected in 12.3 s"
    assert lines[1].startswith("rejected: image_corrupt 2")
    assert [line.split()[:2] for line in lines[3:]] == [["expression", "1,200"], ["spots", "1,200"], ["slides", "2"]]
