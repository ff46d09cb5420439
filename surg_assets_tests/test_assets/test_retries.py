"""Every case step is retried on transient faults; a user's bad video is refused at once."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from resources.settings import load_settings
from surg_assets.assets.ingest import raw_video
from surg_assets.jobs import CASE_ASSETS
from surg_assets.retries import CASE_STEP_RETRY_POLICY
from surg_assets.settings import build_resources


def test_every_case_asset_carries_the_one_retry_policy() -> None:
    policies = {
        f"{a.key.to_user_string()}/{op.name}": op.retry_policy
        for a in CASE_ASSETS
        for op in a.node_def.iterate_op_defs()  # every op of a graph-backed asset too
    }
    assert policies == dict.fromkeys(policies, CASE_STEP_RETRY_POLICY)
    assert CASE_STEP_RETRY_POLICY.max_retries >= 2


def test_a_refused_video_fails_once_and_is_not_retried(surg_home: Path) -> None:
    resources = build_resources(load_settings())
    case_id = "c00000000000000b1"
    resources["blob_store"].put_bytes(f"raw-videos/{case_id}/source.mp4", b"not a video at all")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        result = dg.materialize(
            [raw_video],
            partition_key=case_id,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    assert not result.success
    kinds = [e.event_type for e in result.all_events]
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    assert kinds.count(dg.DagsterEventType.STEP_FAILURE) == 1
