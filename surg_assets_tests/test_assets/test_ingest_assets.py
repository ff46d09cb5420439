"""raw_video and transcoded_video materialized on a real (ephemeral) Dagster instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from ml_models.video import inspect_layout
from resources.settings import load_settings
from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.checks import transcoded_video_meets_contract
from surg_assets.settings import build_resources
from surg_assets_tests.conftest import lake_files


def _drop(home: Path, case_id: str, src: Path, ext: str = "mp4") -> None:
    target = home / "lake" / "raw-videos" / case_id / f"source.{ext}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)


def _materialize(case_id: str) -> tuple[dg.ExecuteInProcessResult, dict]:
    resources = build_resources(load_settings())
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        result = dg.materialize(
            [raw_video, transcoded_video, transcoded_video_meets_contract],
            partition_key=case_id,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    return result, resources


def test_a_valid_video_is_validated_and_normalised(surg_home: Path, videos: dict) -> None:
    case_id = "c00000000000000a1"
    _drop(surg_home, case_id, videos["with_audio_and_tags"])
    result, resources = _materialize(case_id)
    assert result.success
    raw_meta = result.asset_materializations_for_node("raw_video")[0].metadata
    assert raw_meta["probe/codec"].value == "h264"
    assert raw_meta["probe/width"].value == 640
    out_key = f"processed-videos/{case_id}/video.mp4"
    assert lake_files(surg_home, "processed-videos/") == [out_key]
    with resources["blob_store"].local_copy(out_key) as local:
        layout = inspect_layout(local)
    assert (layout.height, layout.has_audio, layout.foreign_tags) == (480, False, {})
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]
    case = resources["catalog"].get_case(case_id)
    assert (case.status, case.width, case.duration_s) == ("analysing", 640, 2.0)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero", "empty"),
        ("text", "not a readable video"),
        ("truncated", "truncated"),
        ("audio_only", "no video stream"),
        ("ffv1_mkv", "not supported"),
        ("broken", "cannot be decoded"),
    ],
)
def test_a_bad_video_fails_the_case_and_writes_nothing(
    surg_home: Path, videos: dict, name: str, reason: str
) -> None:
    case_id = "c00000000000000b2"
    _drop(surg_home, case_id, videos[name])
    result, resources = _materialize(case_id)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_video"
    assert reason in failure.step_failure_data.user_failure_data.description
    case = resources["catalog"].get_case(case_id)
    assert case.status == "failed" and reason in case.failure_reason
    assert lake_files(surg_home, "processed-") == []


def test_limits_come_from_settings(
    surg_home: Path, videos: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURG_MAX_DURATION_S", "1")
    case_id = "c00000000000000c3"
    _drop(surg_home, case_id, videos["good"])
    result, resources = _materialize(case_id)
    assert not result.success
    assert "SURG_MAX_DURATION_S" in resources["catalog"].get_case(case_id).failure_reason
    assert lake_files(surg_home, "processed-") == []


def test_a_case_without_a_stored_video_fails_clearly(surg_home: Path) -> None:
    result, resources = _materialize("c00000000000000d4")
    assert not result.success
    assert "no raw video" in resources["catalog"].get_case("c00000000000000d4").failure_reason
