"""Corrupt frames in the middle of a valid video: analysis goes on and the gap becomes an event."""

from __future__ import annotations

from pathlib import Path

import av
import dagster as dg
import pytest

from ml_models.video import TolerantDecoder, inspect_layout, write_sample_video
from resources.settings import load_settings
from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.assets.perception import read_table, video_events
from surg_assets.assets.privacy import deidentified_video, deidentified_video_key
from surg_assets.checks import (
    deidentified_video_is_clean,
    events_meet_contract,
    transcoded_video_meets_contract,
)
from surg_assets.intake import ingest_file
from surg_assets.settings import build_resources, video_limits_from_env
from surg_assets_tests.test_privacy.damage import damage_packets

SECONDS, FPS = 8, 25
DAMAGE = (3.0, 3.8)


@pytest.fixture(scope="module")
def damaged_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """(clean video, the same video with packets in the middle damaged, damaged packet times)."""
    d = tmp_path_factory.mktemp("damaged")
    clean = write_sample_video(d / "clean.mp4", seconds=SECONDS, fps=FPS, size=(320, 240))
    damaged = d / "damaged.mp4"
    times = damage_packets(clean, damaged, *DAMAGE)
    return clean, damaged, times


def _decode_all(path: Path) -> tuple[list[float], list]:
    with av.open(str(path)) as c:
        decoder = TolerantDecoder(c, c.streams.video[0])
        times = [float(f.time) for f in decoder.frames()]
        return times, decoder.gaps()


def test_the_damaged_file_really_breaks_a_plain_decoder(damaged_video: tuple) -> None:
    _, damaged, times = damaged_video
    assert len(times) == 20  # 0.8 s at 25 fps
    with av.open(str(damaged)) as c, pytest.raises(av.error.InvalidDataError):
        for _ in c.decode(c.streams.video[0]):
            pass


def test_tolerant_decoder_skips_damage_and_reports_the_hole(damaged_video: tuple) -> None:
    clean, damaged, bad = damaged_video
    clean_times, clean_gaps = _decode_all(clean)
    assert clean_gaps == [] and len(clean_times) == SECONDS * FPS
    times, gaps = _decode_all(damaged)
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap.packets == len(bad)
    # The hole covers every damaged packet and ends where decoding resumed.
    assert gap.start_s <= min(bad) and gap.end_s >= max(bad) + 1 / FPS
    assert gap.start_s >= DAMAGE[0] - 0.5 and gap.end_s <= SECONDS
    assert not [t for t in times if gap.start_s <= t < gap.end_s - 1e-6]
    assert max(times) == pytest.approx(SECONDS - 1 / FPS)  # decoding went on to the end


def test_case_assets_go_on_past_corrupt_frames_and_record_the_gap(
    surg_home: Path, damaged_video: tuple
) -> None:
    _, damaged, bad = damaged_video
    resources = build_resources(load_settings())
    outcome = ingest_file(
        damaged, resources["blob_store"], resources["catalog"], video_limits_from_env()
    )
    case_id = outcome.case_id
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        result = dg.materialize(
            [
                raw_video,
                transcoded_video,
                transcoded_video_meets_contract,
                video_events,
                events_meet_contract,
                deidentified_video,
                deidentified_video_is_clean,
            ],
            partition_key=case_id,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    assert result.success, [e.message for e in result.all_events if e.is_step_failure]
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "transcoded_video_meets_contract": True,
        "events_meet_contract": True,  # decode_gap is a known kind, inside the video
        "deidentified_video_is_clean": True,
    }
    meta = result.asset_materializations_for_node("transcoded_video")[0].metadata
    assert meta["decode_gaps"].value == 1
    assert meta["frames"].value == SECONDS * FPS  # the gap is filled, the timeline is whole

    events = read_table(resources["blob_store"], case_id, "events.parquet").to_pandas()
    gaps = events[events.kind == "decode_gap"]
    assert len(gaps) == 1
    gap = gaps.iloc[0]
    assert gap.start_s <= min(bad) + 1e-3 and gap.end_s >= max(bad)
    assert gap.end_s - gap.start_s < 2.0  # the gap, not the rest of the video
    assert '"packets": 20' in gap.detail

    store = resources["blob_store"]
    with store.local_copy(deidentified_video_key(case_id)) as out:
        layout = inspect_layout(out)
        times, out_gaps = _decode_all(out)
    assert layout.frame_count == SECONDS * FPS and out_gaps == []
    assert len(times) == SECONDS * FPS
