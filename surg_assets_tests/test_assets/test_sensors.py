"""The new-video sensor and the case-status sensors, on a real ephemeral instance."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg

from resources.blob_store import BlobInfo
from resources.settings import load_settings
from surg_assets.definitions import defs
from surg_assets.sensors import (
    case_failed_sensor,
    case_ready_sensor,
    new_video_sensor,
    plan_new_videos,
)
from surg_assets.settings import build_resources
from surg_assets_tests.conftest import lake_files


def _put(home: Path, key: str, src: Path | None = None) -> None:
    path = home / "lake" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if src is None:
        path.write_bytes(b"video")
    else:
        shutil.copyfile(src, path)


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=build_resources(load_settings())
    ) as ctx:
        return new_video_sensor(ctx)


def test_plan_separates_cases_from_strays_and_ignores_staging() -> None:
    listing = [
        BlobInfo("raw-videos/c0123456789abcdef/source.mp4", 1, 1.0, {}),
        BlobInfo("raw-videos/c0123456789abcdef/parts/0001", 1, 1.0, {}),
        BlobInfo("raw-videos/Patient Jane.mp4", 1, 2.0, {}),
        BlobInfo("raw-videos/some-folder/video.mov", 1, 3.0, {}),
    ]
    case_ids, strays = plan_new_videos(listing)
    assert case_ids == ["c0123456789abcdef"]
    assert [s.key for s in strays] == [
        "raw-videos/Patient Jane.mp4",
        "raw-videos/some-folder/video.mov",
    ]


def test_sensor_turns_new_uploads_into_case_runs_once(surg_home: Path) -> None:
    _put(surg_home, "raw-videos/c0000000000000001/source.mp4")
    _put(surg_home, "processed-videos/c0000000000000009/video.mp4")
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(instance, None)
        assert [r.partition_key for r in first.run_requests] == ["c0000000000000001"]
        assert [r.run_key for r in first.run_requests] == ["c0000000000000001"]
        assert first.dynamic_partitions_requests[0].partition_keys == ["c0000000000000001"]
        again = _tick(instance, first.cursor)
        assert again.run_requests == [] and again.cursor == first.cursor
        time.sleep(0.01)
        _put(surg_home, "raw-videos/c0000000000000002/source.mkv")
        later = _tick(instance, first.cursor)
        assert [r.partition_key for r in later.run_requests] == ["c0000000000000002"]


def test_cases_already_analysed_are_not_run_again(surg_home: Path) -> None:
    _put(surg_home, "raw-videos/c0000000000000003/source.mp4")
    catalog = build_resources(load_settings())["catalog"]
    catalog.ensure_case("c0000000000000003")
    catalog.set_status("c0000000000000003", "ready")
    with dg.DagsterInstance.ephemeral() as instance:
        assert _tick(instance, None).run_requests == []


def test_a_file_dropped_into_raw_videos_is_adopted_under_a_new_case_id(
    surg_home: Path, videos: dict
) -> None:
    _put(surg_home, "raw-videos/Patient Jane Doe 1970.mp4", videos["good"])
    with dg.DagsterInstance.ephemeral() as instance:
        result = _tick(instance, None)
        assert len(result.run_requests) == 1
        case_id = result.run_requests[0].partition_key
        assert lake_files(surg_home, "raw-videos/") == [f"raw-videos/{case_id}/source.mp4"]
        # The same bytes dropped again are recognised and the copy removed.
        _put(surg_home, "raw-videos/copy.mp4", videos["good"])
        again = _tick(instance, result.cursor)
        assert again.run_requests == []
        assert lake_files(surg_home, "raw-videos/") == [f"raw-videos/{case_id}/source.mp4"]
        # The run the sensor asked for processes the case end to end.
        instance.add_dynamic_partitions("cases", [case_id])
        job = defs().resolve_job_def("analyze_case")
        run = job.execute_in_process(partition_key=case_id, instance=instance)
        assert run.success
    assert lake_files(surg_home, "processed-videos/") == [
        f"processed-videos/{case_id}/deidentified.mp4",
        f"processed-videos/{case_id}/video.mp4",
    ]
    assert not any("Jane" in p.name for p in surg_home.rglob("*"))


def test_run_outcomes_set_the_case_status(surg_home: Path, videos: dict) -> None:
    resources = build_resources(load_settings())
    catalog = resources["catalog"]
    job = defs().resolve_job_def("analyze_case")
    with dg.DagsterInstance.ephemeral() as instance:
        for case_id, video in [("c0000000000000004", "good"), ("c0000000000000005", "text")]:
            _put(surg_home, f"raw-videos/{case_id}/source.mp4", videos[video])
            instance.add_dynamic_partitions("cases", [case_id])
            catalog.ensure_case(case_id)
            result = job.execute_in_process(
                partition_key=case_id, instance=instance, raise_on_error=False
            )
            status = dg.DagsterRunStatus.SUCCESS if result.success else dg.DagsterRunStatus.FAILURE
            event = next(
                e for e in result.all_events if e.event_type_value == f"PIPELINE_{status.value}"
            )
            ctx = dg.build_run_status_sensor_context(
                sensor_name="s",
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                dagster_event=event,
                resources={"catalog": catalog},
            )
            if result.success:
                case_ready_sensor(ctx)
            else:
                case_failed_sensor(ctx.for_run_failure())
    assert catalog.get_case("c0000000000000004").status == "ready"
    failed = catalog.get_case("c0000000000000005")
    assert failed.status == "failed" and "not a readable video" in failed.failure_reason
