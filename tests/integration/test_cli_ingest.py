"""`xinterest ingest` as users run it: a real subprocess per adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XINTEREST_PSEUDONYM_KEY": "cli-test-key", **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_ingest_cli_synthetic(tmp_path: Path, synthetic_small: Path) -> None:
    report = tmp_path / "report.json"
    result = _run(
        [
            "ingest",
            "--source",
            f"synthetic:{synthetic_small}",
            "--lake",
            str(tmp_path / "lake"),
            "--report",
            str(report),
            "--workdir",
            str(tmp_path / "w"),
        ],
        {},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["read"] == data["accepted"] + data["quarantined_total"] + data["duplicates"]
    assert "total" in result.stdout


@pytest.mark.data
@pytest.mark.parametrize("adapter", ["douban", "taobao", "movielens"])
def test_ingest_cli_public(adapter: str, tmp_path: Path, data_dir: Path) -> None:
    report = tmp_path / "report.json"
    result = _run(
        ["ingest", "--source", adapter, "--workdir", str(tmp_path / "w"), "--report", str(report)],
        {"XINTEREST_DATA_DIR": str(data_dir)},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["accepted"] > 0
    assert data["read"] == data["accepted"] + data["quarantined_total"] + data["duplicates"]


def test_ingest_cli_bad_source_is_a_clear_error(tmp_path: Path) -> None:
    result = _run(["ingest", "--source", "nosuch", "--workdir", str(tmp_path)], {})
    assert result.returncode == 2
    assert "unknown source 'nosuch'" in result.stderr
