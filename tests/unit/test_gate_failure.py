"""The gate's failure report: what the gate writes is what the parent reads back, in words."""

from __future__ import annotations

import signal
from pathlib import Path

from llama_direct.runtime import GATE_FAILURE_FILE
from llama_launcher.errors import StartError
from llama_launcher.gate_failure import read_report, write_report


def test_the_parent_reads_the_cause_the_last_lines_and_a_remedy(tmp_path: Path) -> None:
    error = StartError("llama-server crashed with SIGSEGV while loading the model",
                       exit_code=-signal.SIGSEGV, last_lines=[f"line {n}" for n in range(12)])
    assert write_report(tmp_path, error, ["--ctx-size", "512"])
    report = read_report(tmp_path)
    assert report is not None
    assert report.startswith("llama-server crashed with SIGSEGV while loading the model\n")
    assert report.count("llama-server said:") == 5
    assert report.splitlines()[-2] == "  llama-server said: line 11"
    assert "`llama-direct serve -- --ctx-size 512 --no-repack`" in report.splitlines()[-1]


def test_no_report_or_an_unwritable_one_reads_as_none(tmp_path: Path) -> None:
    assert read_report(tmp_path) is None
    error = StartError("gone", exit_code=1, last_lines=[])
    assert not write_report(tmp_path / "missing", error, [])
    (tmp_path / GATE_FAILURE_FILE).write_text("{not json")
    assert read_report(tmp_path) is None
