"""Audit and operations stack: CloudTrail, AWS Config rules, security alarms and budgets."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_config as config
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from surg_deploy.compliance import Accepted, accept, accept_cdk_inline_policies, retention
from surg_deploy.data import DataStack
from surg_deploy.settings import EnvironmentSettings

# AWS Config managed rules, keyed by the control they evidence. They mirror what the app's
# `surg compliance check` inspects from inside, so an auditor sees the same controls twice:
# continuously from AWS Config and on demand from the platform.
CONFIG_RULES: dict[str, str] = {
    "bucket-encrypted-with-kms": config.ManagedRuleIdentifiers.S3_DEFAULT_ENCRYPTION_KMS,
    "bucket-encryption-enabled": config.ManagedRuleIdentifiers.S3_BUCKET_SERVER_SIDE_ENCRYPTION_ENABLED,  # noqa: E501
    "bucket-tls-only": config.ManagedRuleIdentifiers.S3_BUCKET_SSL_REQUESTS_ONLY,
    "bucket-public-access-blocked": config.ManagedRuleIdentifiers.S3_BUCKET_LEVEL_PUBLIC_ACCESS_PROHIBITED,  # noqa: E501
    "bucket-versioning": config.ManagedRuleIdentifiers.S3_BUCKET_VERSIONING_ENABLED,
    "database-encrypted": config.ManagedRuleIdentifiers.RDS_STORAGE_ENCRYPTED,
    "database-private": config.ManagedRuleIdentifiers.RDS_INSTANCE_PUBLIC_ACCESS_CHECK,
    "database-backups": config.ManagedRuleIdentifiers.RDS_DB_INSTANCE_BACKUP_ENABLED,
    "trail-enabled": config.ManagedRuleIdentifiers.CLOUD_TRAIL_ENABLED,
    "trail-multi-region": config.ManagedRuleIdentifiers.CLOUDTRAIL_MULTI_REGION_ENABLED,
    "trail-log-validation": config.ManagedRuleIdentifiers.CLOUD_TRAIL_LOG_FILE_VALIDATION_ENABLED,
    "trail-encrypted": config.ManagedRuleIdentifiers.CLOUD_TRAIL_ENCRYPTION_ENABLED,
    "trail-to-cloudwatch": config.ManagedRuleIdentifiers.CLOUD_TRAIL_CLOUD_WATCH_LOGS_ENABLED,
    "trail-s3-data-events": config.ManagedRuleIdentifiers.CLOUDTRAIL_S3_DATAEVENTS_ENABLED,
    "log-retention": config.ManagedRuleIdentifiers.CW_LOGGROUP_RETENTION_PERIOD_CHECK,
    "log-encrypted": config.ManagedRuleIdentifiers.CLOUDWATCH_LOG_GROUP_ENCRYPTED,
    "vpc-flow-logs": config.ManagedRuleIdentifiers.VPC_FLOW_LOGS_ENABLED,
    "no-ssh-from-anywhere": config.ManagedRuleIdentifiers.EC2_SECURITY_GROUPS_INCOMING_SSH_DISABLED,  # noqa: E501
    "default-security-group-closed": config.ManagedRuleIdentifiers.VPC_DEFAULT_SECURITY_GROUP_CLOSED,  # noqa: E501
    "kms-key-rotation": config.ManagedRuleIdentifiers.CMK_BACKING_KEY_ROTATION_ENABLED,
    "ebs-encrypted": config.ManagedRuleIdentifiers.EBS_ENCRYPTED_VOLUMES,
    "secret-rotation": config.ManagedRuleIdentifiers.SECRETSMANAGER_ROTATION_ENABLED_CHECK,
    "secret-uses-cmk": config.ManagedRuleIdentifiers.SECRETSMANAGER_USING_CMK,
    "database-logging": config.ManagedRuleIdentifiers.RDS_LOGGING_ENABLED,
    "ecs-task-logging": config.ManagedRuleIdentifiers.ECS_TASK_DEFINITION_LOG_CONFIGURATION,
}

# CloudTrail events that page the cloud team (CIS AWS Foundations 4.x style metric filters).
SECURITY_ALARMS: dict[str, str] = {
    "RootAccountUsage": (
        '{ $.userIdentity.type = "Root" && $.userIdentity.invokedBy NOT EXISTS '
        '&& $.eventType != "AwsServiceEvent" }'
    ),
    "UnauthorizedApiCalls": (
        '{ ($.errorCode = "*UnauthorizedOperation") || ($.errorCode = "AccessDenied*") }'
    ),
    "KeyDisabledOrScheduledForDeletion": (
        "{ ($.eventSource = kms.amazonaws.com) && (($.eventName = DisableKey) "
        "|| ($.eventName = ScheduleKeyDeletion)) }"
    ),
    "BucketPolicyChanged": (
        "{ ($.eventSource = s3.amazonaws.com) && (($.eventName = PutBucketPolicy) "
        "|| ($.eventName = DeleteBucketPolicy) || ($.eventName = PutBucketAcl) "
        "|| ($.eventName = PutBucketPublicAccessBlock)) }"
    ),
    "TrailChanged": (
        "{ ($.eventName = StopLogging) || ($.eventName = DeleteTrail) "
        "|| ($.eventName = UpdateTrail) }"
    ),
}


class AuditStack(Stack):
    """The record of who did what, the rules that watch the configuration, and cost alarms."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: EnvironmentSettings,
        data: DataStack,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        account, region = settings.account, settings.region

        audit_key = kms.Key(
            self,
            "AuditKey",
            alias=f"alias/{settings.prefix}-audit",
            description="Encrypts CloudTrail files, the trail log group, Config and alarms",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        audit_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailEncryptsLogs",
                actions=["kms:GenerateDataKey*", "kms:DescribeKey"],
                principals=[iam.ServicePrincipal("cloudtrail.amazonaws.com")],
                resources=["*"],
                conditions={
                    "StringLike": {
                        "kms:EncryptionContext:aws:cloudtrail:arn": (
                            f"arn:aws:cloudtrail:*:{account}:trail/*"
                        )
                    }
                },
            )
        )
        audit_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsEncryptsTrailGroup",
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal(f"logs.{region}.amazonaws.com")],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:aws:logs:{region}:{account}:log-group:*"
                        )
                    }
                },
            )
        )
        audit_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ServicesPublishToEncryptedTopicAndBucket",
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                principals=[
                    iam.ServicePrincipal("budgets.amazonaws.com"),
                    iam.ServicePrincipal("cloudwatch.amazonaws.com"),
                    iam.ServicePrincipal("config.amazonaws.com"),
                ],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )

        trail_access_logs = s3.Bucket(
            self,
            "TrailAccessLogBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(expiration=Duration.days(settings.log_retention_days))
            ],
        )
        accept(
            trail_access_logs,
            [
                Accepted(
                    "AwsSolutions-S1",
                    "Access-log destination of the trail bucket; logging it into itself loops.",
                ),
                Accepted(
                    "HIPAA.Security-S3BucketLoggingEnabled",
                    "Access-log destination of the trail bucket; logging it into itself loops.",
                ),
                Accepted(
                    "HIPAA.Security-S3DefaultEncryptionKMS",
                    "S3 server access logging only delivers to SSE-S3 buckets; no PHI stored.",
                ),
                Accepted(
                    "HIPAA.Security-S3BucketReplicationEnabled",
                    "Request records of the trail bucket; the trail itself is the audit record.",
                ),
                Accepted("CKV_AWS_18", "This is the access-log destination bucket."),
                Accepted("CKV_AWS_144", "Request records only; replication not required."),
                Accepted("CKV_AWS_145", "S3 server access logs only support SSE-S3."),
            ],
        )

        # Object Lock: once written, a trail file cannot be deleted or overwritten before its
        # retention ends (COMPLIANCE mode in prod: not even by the root user).
        lock = (
            s3.ObjectLockRetention.compliance
            if settings.trail_lock_mode == "COMPLIANCE"
            else s3.ObjectLockRetention.governance
        )
        self.trail_bucket = s3.Bucket(
            self,
            "TrailBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=audit_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_lock_enabled=True,
            object_lock_default_retention=lock(Duration.days(settings.trail_retention_days)),
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=trail_access_logs,
            server_access_logs_prefix="trail-bucket/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        accept(
            self.trail_bucket,
            [
                Accepted(
                    "HIPAA.Security-S3BucketReplicationEnabled",
                    "Object Lock protects the trail; organisations that aggregate trails copy "
                    "them with an organisation trail rather than bucket replication.",
                ),
                Accepted("CKV_AWS_144", "Object Lock protects the trail; see the nag reason."),
            ],
        )

        trail_log_group = logs.LogGroup(
            self,
            "TrailLogGroup",
            log_group_name=f"/{settings.prefix}/cloudtrail",
            encryption_key=audit_key,
            retention=retention(settings.log_retention_days),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.trail = cloudtrail.Trail(
            self,
            "Trail",
            trail_name=f"{settings.prefix}-trail",
            bucket=self.trail_bucket,
            encryption_key=audit_key,
            is_multi_region_trail=True,
            include_global_service_events=True,
            enable_file_validation=True,
            send_to_cloud_watch_logs=True,
            cloud_watch_log_group=trail_log_group,
        )
        # Data events on the video bucket: every read and write of a patient video is recorded
        # with the caller's identity (management events alone would only show bucket changes).
        self.trail.add_s3_event_selector(
            [cloudtrail.S3EventSelector(bucket=data.video_bucket)],
            read_write_type=cloudtrail.ReadWriteType.ALL,
            include_management_events=True,
        )

        # --- alarms: one encrypted topic for budget and security notifications ---
        self.alarm_topic = sns.Topic(
            self,
            "AlarmTopic",
            topic_name=f"{settings.prefix}-alarms",
            master_key=audit_key,
            enforce_ssl=True,
        )
        self.alarm_topic.add_subscription(subscriptions.EmailSubscription(settings.alert_email))
        self.alarm_topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="BudgetsPublish",
                actions=["sns:Publish"],
                principals=[iam.ServicePrincipal("budgets.amazonaws.com")],
                resources=[self.alarm_topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        for name, pattern in SECURITY_ALARMS.items():
            metric_filter = trail_log_group.add_metric_filter(
                f"{name}Filter",
                filter_pattern=logs.FilterPattern.literal(pattern),
                metric_namespace=f"surg/{settings.name}/security",
                metric_name=name,
                metric_value="1",
            )
            alarm = cloudwatch.Alarm(
                self,
                f"{name}Alarm",
                alarm_name=f"{settings.prefix}-{name}",
                metric=metric_filter.metric(statistic="Sum", period=Duration.minutes(5)),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarm_topic))

        # --- budget: alarms before the bill, not after ---
        budgets.CfnBudget(
            self,
            "MonthlyBudget",
            budget=budgets.CfnBudget.BudgetDataProperty(
                budget_name=f"{settings.prefix}-monthly",
                budget_type="COST",
                time_unit="MONTHLY",
                budget_limit=budgets.CfnBudget.SpendProperty(
                    amount=settings.monthly_budget_usd, unit="USD"
                ),
                cost_filters={"TagKeyValue": [f"user:project$surg-assets-{settings.name}"]},
            ),
            notifications_with_subscribers=[
                budgets.CfnBudget.NotificationWithSubscribersProperty(
                    notification=budgets.CfnBudget.NotificationProperty(
                        notification_type=notification_type,
                        comparison_operator="GREATER_THAN",
                        threshold=threshold,
                        threshold_type="PERCENTAGE",
                    ),
                    subscribers=[
                        budgets.CfnBudget.SubscriberProperty(
                            subscription_type="SNS", address=self.alarm_topic.topic_arn
                        )
                    ],
                )
                for notification_type, threshold in (("ACTUAL", 80), ("FORECASTED", 100))
            ],
        )

        accept_cdk_inline_policies(self)
        if settings.create_config_recorder:
            self._config_recorder(audit_key)
        for control, identifier in CONFIG_RULES.items():
            rule = config.ManagedRule(
                self,
                f"Rule-{control}",
                config_rule_name=f"{settings.prefix}-{control}",
                identifier=identifier,
                input_parameters={"MinRetentionTime": settings.log_retention_days}
                if control == "log-retention"
                else None,
            )
            if settings.create_config_recorder:
                # Rules evaluate only once the recorder exists.
                rule.node.add_dependency(self._recorder)

    def _config_recorder(self, audit_key: kms.IKey) -> None:
        """AWS Config recorder and delivery channel into the locked trail bucket."""
        role = iam.Role(
            self,
            "ConfigRole",
            assumed_by=iam.ServicePrincipal("config.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AWS_ConfigRole")
            ],
        )
        accept(
            role,
            [
                Accepted(
                    "AwsSolutions-IAM4",
                    "AWS_ConfigRole is the AWS-maintained read-only policy Config needs; AWS "
                    "extends it as new resource types become recordable.",
                    applies_to=(
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWS_ConfigRole",
                    ),
                )
            ],
        )
        self.trail_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ConfigChecksBucket",
                actions=["s3:GetBucketAcl", "s3:ListBucket"],
                principals=[iam.ServicePrincipal("config.amazonaws.com")],
                resources=[self.trail_bucket.bucket_arn],
                conditions={"StringEquals": {"aws:SourceAccount": self.settings.account}},
            )
        )
        self.trail_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ConfigDelivers",
                actions=["s3:PutObject"],
                principals=[iam.ServicePrincipal("config.amazonaws.com")],
                resources=[
                    self.trail_bucket.arn_for_objects(f"config/AWSLogs/{self.settings.account}/*")
                ],
                conditions={
                    "StringEquals": {
                        "aws:SourceAccount": self.settings.account,
                        "s3:x-amz-acl": "bucket-owner-full-control",
                    }
                },
            )
        )
        self._recorder = config.CfnConfigurationRecorder(
            self,
            "ConfigRecorder",
            role_arn=role.role_arn,
            recording_group=config.CfnConfigurationRecorder.RecordingGroupProperty(
                all_supported=True, include_global_resource_types=True
            ),
        )
        channel = config.CfnDeliveryChannel(
            self,
            "ConfigDeliveryChannel",
            s3_bucket_name=self.trail_bucket.bucket_name,
            s3_key_prefix="config",
            s3_kms_key_arn=audit_key.key_arn,
        )
        channel.add_resource_dependency(self._recorder)
