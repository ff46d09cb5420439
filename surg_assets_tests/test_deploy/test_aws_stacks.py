"""The AWS CDK app, proven offline: synthesised templates carry the security controls.

Assertions read the CloudFormation that `cdk synth` produced (the same files cfn-lint and
checkov scan), so a change that drops encryption, opens a port or shortens a retention
fails here before any account sees it.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CDK_APP, DEPLOY, ENVIRONMENTS, STACK_KINDS, Templates

HIPAA_LOG_RETENTION_DAYS = 2192  # six years, 45 CFR 164.316(b)(2)
OPEN_TO_THE_WORLD = {"0.0.0.0/0", "::/0"}


def _refs(value: Any) -> str:
    """A template value flattened to text, to look for the logical ids it references."""
    return json.dumps(value)


def _statements(policy_document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy_document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the synthesis itself -------------------------------------------------------------------


def test_every_environment_synthesises_four_stacks_without_nag_findings(cdk_out: Path) -> None:
    findings = json.loads((cdk_out / "nag-findings.json").read_text())
    expected = {f"surg-{env}-{kind}" for env in ENVIRONMENTS for kind in STACK_KINDS}
    assert set(findings) == expected
    unsuppressed = {
        stack: levels for stack, levels in findings.items() if levels["error"] or levels["warning"]
    }
    assert unsuppressed == {}


def test_both_nag_packs_ran_and_every_suppression_has_a_reason(cdk_out: Path) -> None:
    for pack in ("AwsSolutions", "HIPAA.Security"):
        reports = sorted(cdk_out.glob(f"{pack}-*-NagReport.csv"))
        assert len(reports) == len(ENVIRONMENTS) * len(STACK_KINDS), pack
    suppressed = 0
    for report in cdk_out.glob("*-NagReport.csv"):
        with report.open() as handle:
            for row in csv.DictReader(handle):
                assert row["Compliance"] in {"Compliant", "Non-Compliant", "Suppressed", "N/A"}
                assert row["Compliance"] != "Non-Compliant", (report.name, row)
                if row["Compliance"] == "Suppressed":
                    suppressed += 1
                    assert len(row["Exception Reason"].strip()) >= 30, (report.name, row)
    assert suppressed > 0


def test_every_checkov_skip_in_the_templates_has_a_reason(templates: Templates) -> None:
    for env in ENVIRONMENTS:
        for kind in STACK_KINDS:
            for logical_id, resource in templates.get(env, kind)["Resources"].items():
                for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                    assert skip["id"].startswith("CKV"), logical_id
                    assert len(skip["comment"]) >= 30, (env, kind, logical_id, skip)


# --- data: bucket and database --------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_video_bucket_is_kms_encrypted_with_the_platform_key(templates: Templates, env: str):
    buckets = {
        k: v
        for k, v in templates.resources(env, "data", "AWS::S3::Bucket").items()
        if k.startswith("VideoBucket")
    }
    assert len(buckets) == 1
    (video,) = buckets.values()
    props = video["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = rule["ServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms"
    (data_key,) = templates.resources(env, "data", "AWS::KMS::Key")
    assert data_key.startswith("DataKey")
    assert default["KMSMasterKeyID"] == {"Fn::GetAtt": [data_key, "Arn"]}
    assert rule["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["LoggingConfiguration"]["DestinationBucketName"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_video_bucket_lifecycle_cors_and_wrong_key_denial(templates: Templates, env: str):
    (video,) = [
        v
        for k, v in templates.resources(env, "data", "AWS::S3::Bucket").items()
        if k.startswith("VideoBucket")
    ]
    props = video["Properties"]
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    raw = rules["raw-videos-tiering"]
    assert raw["Prefix"] == "raw-videos/"
    assert [t["StorageClass"] for t in raw["Transitions"]] == ["INTELLIGENT_TIERING", "GLACIER"]
    assert (
        rules["old-versions-and-stale-uploads"]["AbortIncompleteMultipartUpload"][
            "DaysAfterInitiation"
        ]
        == 7
    )
    unclaimed = rules["expire-unclaimed-training-runs"]
    assert (unclaimed["Prefix"], unclaimed["ExpirationInDays"]) == ("training-runs/", 30)
    (cors,) = props["CorsConfiguration"]["CorsRules"]
    assert "ETag" in cors["ExposedHeaders"]
    assert all(o.startswith("https://") for o in cors["AllowedOrigins"])

    policy = next(
        p
        for p in templates.resources(env, "data", "AWS::S3::BucketPolicy").values()
        if "VideoBucket" in _refs(p["Properties"]["Bucket"])
    )
    sids = {s.get("Sid") for s in _statements(policy["Properties"]["PolicyDocument"])}
    assert "DenyWrongEncryptionKey" in sids


def test_every_bucket_blocks_public_access_and_refuses_plain_http(templates: Templates) -> None:
    buckets = templates.all_resources("AWS::S3::Bucket")
    assert len(buckets) >= 4 * len(ENVIRONMENTS)
    for stack, logical_id, bucket in buckets:
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, (stack, logical_id)
        assert "BucketEncryption" in props, (stack, logical_id)
        env, kind = stack.split("-")[1:3]
        policies = [
            p
            for p in templates.resources(env, kind, "AWS::S3::BucketPolicy").values()
            if logical_id in _refs(p["Properties"]["Bucket"])
        ]
        tls_denials = [
            s
            for p in policies
            for s in _statements(p["Properties"]["PolicyDocument"])
            if s["Effect"] == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        ]
        assert tls_denials, f"{stack}/{logical_id} accepts plain HTTP"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_database_is_encrypted_private_and_forces_tls(templates: Templates, env: str) -> None:
    (database,) = templates.resources(env, "data", "AWS::RDS::DBInstance").values()
    props = database["Properties"]
    assert props["StorageEncrypted"] is True
    assert "DataKey" in _refs(props["KmsKeyId"])
    assert props["PubliclyAccessible"] is False
    assert props["BackupRetentionPeriod"] >= 7
    assert props["EnableCloudwatchLogsExports"] == ["postgresql", "upgrade"]
    assert props["MonitoringInterval"] == 60
    if env != "dev":
        assert props["MultiAZ"] is True
        assert props["DeletionProtection"] is True
    (parameters,) = templates.resources(env, "data", "AWS::RDS::DBParameterGroup").values()
    assert parameters["Properties"]["Parameters"]["rds.force_ssl"] == "1"
    (subnets,) = templates.resources(env, "data", "AWS::RDS::DBSubnetGroup").values()
    assert "isolated" in _refs(subnets["Properties"]["SubnetIds"])
    # Credentials live in a KMS-encrypted secret that rotates.
    (secret,) = [
        s
        for k, s in templates.resources(env, "data", "AWS::SecretsManager::Secret").items()
        if k.startswith("DatabaseSecret")
    ]
    assert "DataKey" in _refs(secret["Properties"]["KmsKeyId"])
    rotations = {
        r["Properties"]["HostedRotationLambda"]["RotationType"]: r["Properties"]
        for r in templates.resources(env, "data", "AWS::SecretsManager::RotationSchedule").values()
    }
    assert set(rotations) == {"PostgreSQLSingleUser", "PostgreSQLMultiUser"}
    for rotation in rotations.values():
        assert rotation["RotationRules"]["ScheduleExpression"] == "rate(30 days)"
        assert "DataKey" in _refs(rotation["HostedRotationLambda"]["KmsKeyArn"])
    # Services use the alternating-user secret: a rotation never breaks a running task.
    assert "DatabaseSecret" in _refs(rotations["PostgreSQLMultiUser"]["SecretId"])
    master = rotations["PostgreSQLMultiUser"]["HostedRotationLambda"]["MasterSecretArn"]
    assert "DatabaseAdminSecret" in _refs(master)
    assert templates.resources(env, "data", "AWS::Backup::BackupSelection")


# --- network -------------------------------------------------------------------------------


def test_no_security_group_accepts_traffic_from_anywhere(templates: Templates) -> None:
    for stack, logical_id, group in templates.all_resources("AWS::EC2::SecurityGroup"):
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            assert rule.get("CidrIp") not in OPEN_TO_THE_WORLD, (stack, logical_id, rule)
            assert rule.get("CidrIpv6") not in OPEN_TO_THE_WORLD, (stack, logical_id, rule)
    for stack, logical_id, rule in templates.all_resources("AWS::EC2::SecurityGroupIngress"):
        props = rule["Properties"]
        assert props.get("CidrIp") not in OPEN_TO_THE_WORLD, (stack, logical_id)
        assert props.get("CidrIpv6") not in OPEN_TO_THE_WORLD, (stack, logical_id)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_database_accepts_only_postgres_from_platform_security_groups(
    templates: Templates, env: str
) -> None:
    rules = [
        r["Properties"]
        for r in templates.resources(env, "network", "AWS::EC2::SecurityGroupIngress").values()
        if "DatabaseSecurityGroup" in _refs(r["Properties"]["GroupId"])
    ]
    assert len(rules) == 3
    for rule in rules:
        assert (rule["FromPort"], rule["ToPort"]) == (5432, 5432)
        assert "SourceSecurityGroupId" in rule and "CidrIp" not in rule


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_vpc_has_flow_logs_endpoints_and_no_public_ips(templates: Templates, env: str) -> None:
    (flow_log,) = templates.resources(env, "network", "AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == "ALL"
    services = {
        _refs(e["Properties"]["ServiceName"])
        for e in templates.resources(env, "network", "AWS::EC2::VPCEndpoint").values()
    }
    for service in ("s3", "kms", "ecr.api", "ecr.dkr", "logs", "secretsmanager", "sts"):
        assert any(f".{service}" in name for name in services), service
    for subnet in templates.resources(env, "network", "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


# --- audit and operations ------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cloudtrail_is_multi_region_validated_encrypted_and_records_video_access(
    templates: Templates, env: str
) -> None:
    (trail,) = templates.resources(env, "audit", "AWS::CloudTrail::Trail").values()
    props = trail["Properties"]
    assert props["IsMultiRegionTrail"] is True
    assert props["EnableLogFileValidation"] is True
    assert props["IncludeGlobalServiceEvents"] is True
    assert "AuditKey" in _refs(props["KMSKeyId"])
    assert props["CloudWatchLogsLogGroupArn"]
    (selector,) = props["EventSelectors"]
    assert selector["ReadWriteType"] == "All"
    assert "VideoBucket" in _refs(selector["DataResources"])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_trail_bucket_is_object_locked(templates: Templates, env: str) -> None:
    (trail_bucket,) = [
        b
        for k, b in templates.resources(env, "audit", "AWS::S3::Bucket").items()
        if k.startswith("TrailBucket")
    ]
    props = trail_bucket["Properties"]
    assert props["ObjectLockEnabled"] is True
    retention = props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert retention["Mode"] == ("COMPLIANCE" if env == "prod" else "GOVERNANCE")
    if env == "prod":
        assert retention["Days"] >= HIPAA_LOG_RETENTION_DAYS


def test_every_log_group_is_encrypted_and_kept(templates: Templates) -> None:
    groups = templates.all_resources("AWS::Logs::LogGroup")
    assert len(groups) >= 9 * len(ENVIRONMENTS)
    for stack, logical_id, group in groups:
        props = group["Properties"]
        assert "KmsKeyId" in props, (stack, logical_id)
        minimum = 365 if "-dev-" in stack else HIPAA_LOG_RETENTION_DAYS
        assert props["RetentionInDays"] >= minimum, (stack, logical_id)


def test_every_kms_key_rotates(templates: Templates) -> None:
    keys = templates.all_resources("AWS::KMS::Key")
    assert len(keys) == 4 * len(ENVIRONMENTS)
    for stack, logical_id, key in keys:
        assert key["Properties"]["EnableKeyRotation"] is True, (stack, logical_id)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_config_rules_alarms_and_budget(templates: Templates, env: str) -> None:
    identifiers = {
        r["Properties"]["Source"]["SourceIdentifier"]
        for r in templates.resources(env, "audit", "AWS::Config::ConfigRule").values()
    }
    for required in (
        "S3_DEFAULT_ENCRYPTION_KMS",
        "S3_BUCKET_SSL_REQUESTS_ONLY",
        "RDS_STORAGE_ENCRYPTED",
        "RDS_INSTANCE_PUBLIC_ACCESS_CHECK",
        "CLOUD_TRAIL_LOG_FILE_VALIDATION_ENABLED",
        "MULTI_REGION_CLOUD_TRAIL_ENABLED",
        "CW_LOGGROUP_RETENTION_PERIOD_CHECK",
    ):
        assert required in identifiers
    assert templates.resources(env, "audit", "AWS::Config::ConfigurationRecorder")
    alarms = templates.resources(env, "audit", "AWS::CloudWatch::Alarm")
    assert {a["Properties"]["MetricName"] for a in alarms.values()} >= {
        "RootAccountUsage",
        "UnauthorizedApiCalls",
        "KeyDisabledOrScheduledForDeletion",
    }
    (budget,) = templates.resources(env, "audit", "AWS::Budgets::Budget").values()
    notifications = budget["Properties"]["NotificationsWithSubscribers"]
    assert {n["Notification"]["NotificationType"] for n in notifications} == {
        "ACTUAL",
        "FORECASTED",
    }
    (topic,) = templates.resources(env, "audit", "AWS::SNS::Topic").values()
    assert "AuditKey" in _refs(topic["Properties"]["KmsMasterKeyId"])


# --- compute -------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_containers_get_credentials_only_as_secrets(templates: Templates, env: str) -> None:
    task_definitions = templates.resources(env, "compute", "AWS::ECS::TaskDefinition")
    assert len(task_definitions) == 6
    base = {"DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "WANDB_API_KEY"}
    admin = {"SURG_DB_ADMIN_USER", "SURG_DB_ADMIN_PASSWORD"}
    for logical_id, task in task_definitions.items():
        for container in task["Properties"]["ContainerDefinitions"]:
            names = {e["Name"] for e in container.get("Environment", [])}
            assert not {n for n in names if "PASSWORD" in n or n.endswith("API_KEY")}, logical_id
            secrets = {s["Name"] for s in container.get("Secrets", [])}
            # Only the one-off bootstrap task ever receives the admin credentials.
            expected = base | admin if logical_id.startswith("DbAdmin") else base
            assert secrets == expected, logical_id
            assert container["LogConfiguration"]["LogDriver"] == "awslogs"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_services_restart_weekly_within_the_rotation_period(templates: Templates, env: str):
    services = templates.resources(env, "compute", "AWS::ECS::Service")
    schedules = templates.resources(env, "compute", "AWS::Scheduler::Schedule")
    assert len(schedules) == len(services) == 3
    restarted = set()
    for schedule in schedules.values():
        props = schedule["Properties"]
        assert props["ScheduleExpression"] == "cron(0 3 ? * SUN *)"
        assert props["Target"]["Arn"] == "arn:aws:scheduler:::aws-sdk:ecs:updateService"
        parts = props["Target"]["Input"]["Fn::Join"][1]
        assert "".join(p for p in parts if isinstance(p, str)).endswith(
            '"ForceNewDeployment":true}'
        )
        restarted |= {
            p["Fn::GetAtt"][0] for p in parts if isinstance(p, dict) and "Fn::GetAtt" in p
        }
    assert restarted == set(services)


def test_dagster_ecs_yaml_env_vars_are_set_by_every_task_definition(templates: Templates):
    instance = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())
    needed = set(_env_references(instance))
    assert {"DAGSTER_PG_HOST", "DAGSTER_RUN_TASK_DEFINITION", "SURG_ECS_CLUSTER"} <= needed
    for env in ENVIRONMENTS:
        for logical_id, task in templates.resources(
            env, "compute", "AWS::ECS::TaskDefinition"
        ).items():
            if not logical_id.startswith(("DagsterWebserver", "DagsterDaemon")):
                continue
            (container,) = task["Properties"]["ContainerDefinitions"]
            provided = {e["Name"] for e in container["Environment"]} | {
                s["Name"] for s in container["Secrets"]
            }
            assert needed <= provided, (env, logical_id, needed - provided)


def _env_references(node: Any) -> list[str]:
    """Every `{env: NAME}` in a Dagster config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return [node["env"]]
        return [name for value in node.values() for name in _env_references(value)]
    if isinstance(node, list):
        return [name for value in node for name in _env_references(value)]
    return []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_services_are_private_behind_an_internal_tls_load_balancer(templates: Templates, env: str):
    for service in templates.resources(env, "compute", "AWS::ECS::Service").values():
        network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED"
        assert service["Properties"]["EnableExecuteCommand"] is False
    (balancer,) = templates.resources(
        env, "compute", "AWS::ElasticLoadBalancingV2::LoadBalancer"
    ).values()
    assert balancer["Properties"]["Scheme"] == "internal"
    attributes = {a["Key"]: a["Value"] for a in balancer["Properties"]["LoadBalancerAttributes"]}
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"
    listeners = templates.resources(env, "compute", "AWS::ElasticLoadBalancingV2::Listener")
    assert [x["Properties"]["Protocol"] for x in listeners.values()] == ["HTTPS"]
    (listener,) = listeners.values()
    assert listener["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_gpu_capacity_scales_to_zero_on_imdsv2_encrypted_instances(templates: Templates, env: str):
    providers = templates.resources(env, "compute", "AWS::ECS::CapacityProvider")
    names = sorted(p["Properties"]["Name"] for p in providers.values())
    assert names == ["surg-gpu", "surg-gpu-spot"]
    for group in templates.resources(env, "compute", "AWS::AutoScaling::AutoScalingGroup").values():
        assert group["Properties"]["MinSize"] == "0"
    for template in templates.resources(env, "compute", "AWS::EC2::LaunchTemplate").values():
        data = template["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["Monitoring"] == {"Enabled": True}
        assert all(d["Ebs"]["Encrypted"] for d in data["BlockDeviceMappings"])
        assert data["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_projects_ecs_gpu_tags_find_their_capacity(templates: Templates, env: str) -> None:
    placement = pytest.importorskip("surg_assets.placement", reason="surg_assets not importable")
    tags = placement.GPU_OP_TAGS
    kwargs = tags["ecs/run_task_kwargs"]
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    providers = {
        p["Properties"]["Name"]
        for p in templates.resources(env, "compute", "AWS::ECS::CapacityProvider").values()
    }
    for strategy in kwargs["capacityProviderStrategy"]:
        assert strategy["capacityProvider"] in providers
    # A GPU step must fit on one instance of the GPU type next to the ECS agent.
    instance_type = _settings_module().settings_for(env).gpu_instance_type
    vcpus, memory_gib = GPU_INSTANCE_SIZES[instance_type]
    assert int(tags["ecs/cpu"]) <= vcpus * 1024
    assert int(tags["ecs/memory"]) <= memory_gib * 1024 * 0.95
    # The executor overrides the container named like the run launcher's ("run").
    (gpu_task,) = [
        t
        for k, t in templates.resources(env, "compute", "AWS::ECS::TaskDefinition").items()
        if k.startswith("GpuStepTask")
    ]
    assert gpu_task["Properties"]["ContainerDefinitions"][0]["Name"] == "run"
    assert gpu_task["Properties"]["Family"] == "surg-gpu-step"


# vCPUs and GiB of the GPU instance types the settings may name.
GPU_INSTANCE_SIZES = {"g5.xlarge": (4, 16), "g5.2xlarge": (8, 32), "g6.2xlarge": (8, 32)}


def test_no_iam_policy_grants_everything(templates: Templates) -> None:
    for cfn_type in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for stack, logical_id, policy in templates.all_resources(cfn_type):
            for statement in _statements(policy["Properties"]["PolicyDocument"]):
                actions = _as_list(statement.get("Action", []))
                assert "*" not in actions, (stack, logical_id)
                assert not any(a.endswith(":*") for a in actions), (stack, logical_id, actions)
                if statement["Effect"] == "Allow" and statement.get("Resource") == "*":
                    assert not any(a.startswith(("s3:", "kms:")) for a in actions), (
                        stack,
                        logical_id,
                        actions,
                    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_web_app_can_upload_raw_video_but_not_touch_models(templates: Templates, env: str):
    policies = templates.resources(env, "compute", "AWS::IAM::Policy")
    (web,) = [p for k, p in policies.items() if k.startswith("WebAppTaskTaskRole")]
    text = _refs(web["Properties"]["PolicyDocument"])
    assert "/raw-videos/*" in text and "/processed-videos/*" in text
    assert "/models/" not in text and "/datasets/" not in text


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_roles_that_train_may_keep_weights_under_training_runs(templates: Templates, env: str):
    """Training steps keep their weights under training-runs/ until registered: the roles that
    write models may write, read, delete and list there, and the web app may not."""
    policies = templates.resources(env, "compute", "AWS::IAM::Policy")
    texts = {k: _refs(p["Properties"]["PolicyDocument"]) for k, p in policies.items()}
    training = [t for t in texts.values() if "/models/*" in t]
    assert len(training) >= 2  # the run task and the GPU step task
    for text in training:
        assert "/training-runs/*" in text and '"training-runs/*"' in text  # objects, listing
        assert "s3:DeleteObject" in text
    assert all("training-runs" not in t for k, t in texts.items() if k.startswith("WebApp"))


# --- settings (plain Python, importable without CDK) ---------------------------------------


def _settings_module():
    sys.path.insert(0, str(CDK_APP))
    try:
        from surg_deploy import settings
    finally:
        sys.path.remove(str(CDK_APP))
    return settings


def test_settings_refuse_a_load_balancer_open_to_the_internet() -> None:
    settings = _settings_module()
    with pytest.raises(ValueError, match="0.0.0.0/0"):
        settings.settings_for("prod", {"prod.client_cidrs": "10.0.0.0/8, 0.0.0.0/0"})
    with pytest.raises(ValueError, match="Unknown environment"):
        settings.settings_for("qa")


def test_settings_overrides_come_from_cdk_context() -> None:
    settings = _settings_module()
    prod = settings.settings_for(
        "prod", {"prod.account": "123456789012", "prod.monthly_budget_usd": "4200"}
    )
    assert (prod.account, prod.monthly_budget_usd) == ("123456789012", 4200)
    assert prod.log_retention_days >= HIPAA_LOG_RETENTION_DAYS
    assert prod.db_multi_az and prod.deletion_protection
    assert prod.trail_lock_mode == "COMPLIANCE"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_ci_deploys_through_an_oidc_role_pinned_to_repo_and_environment(
    templates: Templates, env: str
) -> None:
    (role,) = templates.resources(env, "cicd", "AWS::IAM::Role").values()
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    subject = statement["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]
    expected_environment = "production" if env == "prod" else "staging"
    assert subject.endswith(f":environment:{expected_environment}")
    assert "*" not in subject
    # Nobody gets long-lived credentials: no IAM users, no access keys, anywhere.
    assert not templates.all_resources("AWS::IAM::User")
    assert not templates.all_resources("AWS::IAM::AccessKey")
