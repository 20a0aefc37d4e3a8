"""Progress on stderr: a live line on a terminal, plain lines in logs; Spark task counts; ``stlake ingest``."""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from stlake.progress import ConsoleProgress, LogProgress, spark_tasks


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_and_at_most_every_interval():
    out = io.StringIO()
    progress = ConsoleProgress(stream=out, plain_every=3600)
    assert progress.mode == "plain"
    with progress.meter("units", 4, "tasks", rate_of="tiles") as meter:
        meter.update(advance=1, tiles=10)
        meter.update(advance=1, tiles=10)  # within the interval: not printed
        progress.warn("rejected s1: image_corrupt")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("stlake: units 1/4 tasks · tiles 10")
    assert lines[1] == "stlake: rejected s1: image_corrupt"
    assert lines[2].startswith("stlake: units 2/4 tasks · tiles 20") and len(lines) == 3


def test_live_line_is_redrawn_in_place_and_events_print_above_it():
    out = Terminal()
    progress = ConsoleProgress(stream=out)
    assert progress.mode == "live"
    meter = progress.meter("units", 2, "tasks")
    meter.update(done=1)
    progress.note("landed s1: 10 spots")
    meter.close("units done")
    text = out.getvalue()
    assert "\r\033[2K" in text and "stlake: landed s1: 10 spots\n" in text
    assert text.endswith("stlake: units done\n")


def test_off_prints_nothing_and_log_progress_logs(caplog):
    out = Terminal()
    progress = ConsoleProgress("off", stream=out)
    progress.note("x")
    progress.meter("a", 1, "b").update(done=1)
    assert out.getvalue() == ""
    with caplog.at_level(logging.INFO, logger="stlake"):
        LogProgress().note("found 3 slides")
        LogProgress().warn("rejected s1: image_corrupt")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "found 3 slides"), ("WARNING", "rejected s1: image_corrupt")]


def test_spark_tasks_reports_task_counts_of_a_classic_session(spark):
    seen: list[tuple[int, int]] = []
    with spark_tasks(spark, lambda done, total: seen.append((done, total)), every=0.1):
        spark.sparkContext.parallelize(range(4), 4).map(lambda x: time.sleep(1.0) or x).collect()
    assert seen and all(total == 4 for _, total in seen), seen
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def ingest(manifest: str, lake: str, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STLAKE_SPARK_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "stlake.cli", "ingest", "--source", manifest, "--lake", lake,
                           "--master", "local[2]", *flags], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def demo_run(synthetic_dataset, tmp_path_factory) -> tuple[subprocess.CompletedProcess, str]:
    lake = str(tmp_path_factory.mktemp("progress") / "lake")
    report = str(tmp_path_factory.mktemp("progress") / "report.json")
    return ingest(os.path.join(synthetic_dataset["root"], "manifest.csv"), lake, "--report", report), report


def test_ingest_shows_progress_quietly_and_exits_5_on_rejects(demo_run, synthetic_dataset):
    result, report_path = demo_run
    assert result.returncode == 5, result.stderr[-3000:]
    err = result.stderr.splitlines()
    corrupt = sorted(synthetic_dataset["corrupt"])
    with open(os.path.join(synthetic_dataset["root"], "manifest.csv"), newline="") as handle:
        per_layout = collections.Counter(row["layout"] for row in csv.DictReader(handle))
    n_slides = sum(per_layout.values())
    assert any(line.startswith("stlake: run ") and f"found {n_slides} slides" in line
               and f"visium {per_layout['visium']}" in line for line in err), err[:5]
    assert any(line.startswith("stlake: units ") and "/" in line and "tiles" in line for line in err)
    for slide in corrupt:
        assert any(line.startswith(f"stlake: rejected {slide}: ") for line in err), slide
    assert any(line.startswith("stlake: landed visium_1: ") and "spots" in line for line in err)
    # quiet: no Spark INFO lines, no banner; only stlake's lines and the JVM's one incubator warning
    assert not [line for line in err if not line.startswith("stlake: ") and "incubator" not in line], err
    assert "\r" not in result.stderr  # not a terminal: plain lines
    out = result.stdout.splitlines()
    assert out[0].startswith("run ") and f"{len(corrupt)} rejected" in out[0]
    report = json.load(open(report_path))
    assert sorted(report["rejected"]) == corrupt and len(report["landed"]) == n_slides - len(corrupt)
