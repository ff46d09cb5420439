"""case_report with an LLM writer configured, as Dagster runs it (real local model server)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from resources.report_writers import OpenAICompatibleReportWriter
from resources.settings import load_settings
from surg_assets import checks_cognition
from surg_assets.assets.cognition import analysis_key, case_report, report_key
from surg_assets.settings import build_resources
from surg_assets_tests.test_cognition.cases import CASE, LLM_SUMMARY, hand_analysis, llm_report
from surg_assets_tests.test_cognition.llm_servers import ScriptedServer, chat_completion


def _materialize(writer: object) -> tuple[dg.ExecuteInProcessResult, object]:
    res = build_resources(load_settings())
    res["blob_store"].put_bytes(analysis_key(CASE), hand_analysis().model_dump_json().encode())
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [CASE])
        result = dg.materialize(
            [case_report, checks_cognition.report_is_valid_and_grounded],
            partition_key=CASE,
            instance=instance,
            resources={"blob_store": res["blob_store"], "report_writer": writer},
        )
    return result, res["blob_store"]


def test_case_report_with_an_openai_compatible_model(surg_home: Path) -> None:
    with ScriptedServer([chat_completion(json.dumps(llm_report()))]) as server:
        writer = OpenAICompatibleReportWriter(base_url=server.url, model="test-model")
        result, store = _materialize(writer)
    assert result.success
    meta = result.asset_materializations_for_node("case_report")[0].metadata
    assert (meta["writer"].value, meta["model"].value, meta["grounded"].value) == (
        "openai_compatible", "test-model", True
    )  # fmt: skip
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    report = json.loads(store.get_bytes(report_key(CASE)))
    assert report["procedure_summary"] == LLM_SUMMARY
    assert LLM_SUMMARY.split(".")[0] in store.get_bytes(report_key(CASE, "html")).decode()


def test_case_report_falls_back_to_the_template_when_the_model_misbehaves(
    surg_home: Path,
) -> None:
    made_up = chat_completion(json.dumps(llm_report(procedure_summary="Bleeding at 00:00:57.")))
    with ScriptedServer([made_up]) as server:
        writer = OpenAICompatibleReportWriter(base_url=server.url, model="m", max_attempts=2)
        result, store = _materialize(writer)
    assert result.success
    meta = result.asset_materializations_for_node("case_report")[0].metadata
    assert meta["writer"].value == "template" and meta["attempts"].value == 2
    assert "time 00:00:57 is not in the analysis" in meta["fallback_reason"].value
    assert result.get_asset_check_evaluations()[0].passed
