"""The security-relevant properties again, through aws_cdk.assertions.Template (CDK's own API).

aws-cdk-lib lives in the tools environment, so the assertions run in its interpreter over the
templates the session's synthesis wrote; any failed ``has_resource_properties`` fails the test
with CDK's own message.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from surg_assets_tests.test_deploy.conftest import require_tool, run_tool

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from aws_cdk.assertions import Match, Template

    out = Path(sys.argv[1])
    for env in ("dev", "prod"):
        load = lambda kind: Template.from_json(
            json.loads((out / f"surg-{env}-{kind}.template.json").read_text())
        )
        data = load("data")
        data.has_resource_properties("AWS::S3::Bucket", {
            "BucketEncryption": {"ServerSideEncryptionConfiguration": Match.array_with([
                Match.object_like({"ServerSideEncryptionByDefault": Match.object_like(
                    {"SSEAlgorithm": "aws:kms"})})])},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True, "BlockPublicPolicy": True,
                "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
            "VersioningConfiguration": {"Status": "Enabled"},
        })
        data.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {
            "Statement": Match.array_with([Match.object_like({
                "Effect": "Deny",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})
        data.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
        data.has_resource_properties("AWS::RDS::DBInstance", {
            "StorageEncrypted": True, "PubliclyAccessible": False})
        audit = load("audit")
        audit.has_resource_properties("AWS::CloudTrail::Trail", {
            "IsMultiRegionTrail": True, "EnableLogFileValidation": True})
        audit.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": Match.any_value()})
        load("network").has_resource_properties(
            "AWS::EC2::VPCEndpoint", {"ServiceName": Match.any_value()})
    print("all assertions hold")
    """
)


def test_security_properties_with_cdk_assertions(cdk_out: Path) -> None:
    python = require_tool("python")
    output = run_tool([python, "-c", SCRIPT, cdk_out])
    assert "all assertions hold" in output
