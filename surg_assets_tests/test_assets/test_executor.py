"""How a run's steps execute: in the run's process locally, a process per step in prod."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from ml_models.errors import InputError
from surg_assets.settings import run_executor


def test_executor_follows_the_environment(surg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SURG_EXECUTOR", raising=False)
    assert run_executor() is dg.in_process_executor
    monkeypatch.setenv("SURG_ENV", "prod")
    assert run_executor() is dg.multi_or_in_process_executor
    monkeypatch.setenv("SURG_EXECUTOR", "in_process")
    assert run_executor() is dg.in_process_executor
    monkeypatch.setenv("SURG_EXECUTOR", "threads")
    with pytest.raises(InputError, match="SURG_EXECUTOR='threads' is unknown"):
        run_executor()


def _step_pids(home: Path, case_id: str) -> dict[str, int]:
    """Run raw_video and transcoded_video of ``analyze_case`` as Dagster runs them (a
    reconstructable job on a real instance); the process id each step started in."""
    from surg_assets.definitions import analyze_case_job

    (home / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        result = dg.execute_job(
            dg.reconstructable(analyze_case_job),
            instance=instance,
            tags={"dagster/partition": case_id},
            asset_selection=[dg.AssetKey("raw_video"), dg.AssetKey("transcoded_video")],
        )
        assert result.success
        return {
            e.step_key: e.pid
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.STEP_START and e.step_key
        }


@pytest.mark.parametrize("executor", ["in_process", "multiprocess"])
def test_steps_of_a_local_run_share_one_process_unless_asked(
    surg_home: Path, videos: dict, monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    monkeypatch.setenv("SURG_EXECUTOR", executor)
    case_id = "c0000000000000e01"
    target = surg_home / "lake" / "raw-videos" / case_id / "source.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(videos["with_audio_and_tags"], target)
    pids = _step_pids(surg_home, case_id)
    assert {"raw_video", "transcoded_video"} <= set(pids)  # and the blocking check
    assert (len(set(pids.values())) == 1) is (executor == "in_process")
