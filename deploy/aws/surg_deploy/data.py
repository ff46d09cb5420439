"""Data stack: the video bucket and the PostgreSQL database, encrypted with the platform CMK."""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from surg_deploy.compliance import Accepted, accept, accept_cdk_inline_policies, retention
from surg_deploy.network import POSTGRES_PORT, NetworkStack
from surg_deploy.settings import EnvironmentSettings

# Blob-store prefixes from DESIGN.md section 3; lifecycle rules and IAM grants refer to these.
RAW_VIDEOS = "raw-videos/"
PROCESSED_VIDEOS = "processed-videos/"
PROCESSED_METADATA = "processed-metadata/"
DATASETS = "datasets/"
MODELS = "models/"
# Weights a training attempt keeps until they are registered, so that a retry after a failure
# past training does not train again (surg_assets/assets/training.py). Unclaimed ones expire.
TRAINING_RUNS = "training-runs/"
TRAINING_RUNS_EXPIRE_DAYS = 30
# The platform's own object prefixes (Dagster's compute logs are not among them).
PLATFORM_PREFIXES = (
    RAW_VIDEOS,
    PROCESSED_VIDEOS,
    PROCESSED_METADATA,
    DATASETS,
    MODELS,
    TRAINING_RUNS,
)
# Dagster's S3 compute-log manager writes step stdout/stderr here (may mention case ids).
COMPUTE_LOGS = "dagster-compute-logs/"

CATALOG_DATABASE = "surg_catalog"
DAGSTER_DATABASE = "dagster"
DATABASE_LOG_EXPORTS = ("postgresql", "upgrade")
APP_DATABASE_USER = "surg_app"
POSTGRES_ENGINE = rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_9)


class DataStack(Stack):
    """Customer-managed key, video bucket (with its access-log bucket) and RDS PostgreSQL."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: EnvironmentSettings,
        network: NetworkStack,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        removal = RemovalPolicy.RETAIN if settings.deletion_protection else RemovalPolicy.DESTROY

        # One CMK for patient data at rest (videos, results, database, its secret). Rotated
        # yearly by KMS; disabling it makes every copy unreadable, the emergency brake.
        self.data_key = kms.Key(
            self,
            "DataKey",
            alias=f"alias/{settings.prefix}-data",
            description="surg-assets patient data: video bucket, RDS, database secret",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
            pending_window=Duration.days(30),
        )

        # S3 server access logs cannot be written to an SSE-KMS bucket, so this bucket uses
        # SSE-S3; it holds request records (keys, requesters), never video.
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            auto_delete_objects=not settings.deletion_protection,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(settings.log_retention_days),
                    noncurrent_version_expiration=Duration.days(30),
                )
            ],
        )
        accept(
            self.access_log_bucket,
            [
                Accepted(
                    "AwsSolutions-S1",
                    "This is the access-log destination; logging it into itself would loop.",
                ),
                Accepted(
                    "HIPAA.Security-S3BucketLoggingEnabled",
                    "This is the access-log destination; logging it into itself would loop.",
                ),
                Accepted(
                    "HIPAA.Security-S3DefaultEncryptionKMS",
                    "S3 server access logging only delivers to SSE-S3 buckets; no PHI is stored.",
                ),
                Accepted(
                    "HIPAA.Security-S3BucketReplicationEnabled",
                    "Request logs are an operational record; CloudTrail data events are the "
                    "audit record and live in the locked trail bucket.",
                ),
                Accepted("CKV_AWS_18", "This is the access-log destination bucket."),
            ],
        )

        # --- the video bucket: everything in DESIGN.md's blob-store key layout ---
        self.video_bucket = s3.Bucket(
            self,
            "VideoBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.data_key,
            # Bucket keys cut KMS requests (and cost) for multi-GB multipart uploads ~99 %.
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            # Versioning is what makes a deleted or overwritten video restorable (deploy/README.md).
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="video-bucket/",
            transfer_acceleration=settings.transfer_acceleration,
            removal_policy=removal,
            auto_delete_objects=not settings.deletion_protection,
            cors=[
                s3.CorsRule(
                    # Browsers upload straight to S3 with presigned multipart URLs; the client
                    # must read each part's ETag to complete the upload.
                    allowed_methods=[s3.HttpMethods.PUT, s3.HttpMethods.GET, s3.HttpMethods.HEAD],
                    allowed_origins=[f"https://{settings.domain_name}"],
                    allowed_headers=["*"],
                    exposed_headers=["ETag"],
                    max_age=3000,
                )
            ],
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="raw-videos-tiering",
                    prefix=RAW_VIDEOS,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                            transition_after=Duration.days(settings.raw_video_ia_days),
                        ),
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER,
                            transition_after=Duration.days(settings.raw_video_archive_days),
                        ),
                    ],
                ),
                s3.LifecycleRule(
                    id="processed-videos-tiering",
                    prefix=PROCESSED_VIDEOS,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                            transition_after=Duration.days(settings.raw_video_ia_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="old-versions-and-stale-uploads",
                    # Deleted/overwritten objects stay restorable for this window, then go.
                    noncurrent_version_expiration=Duration.days(settings.noncurrent_version_days),
                    # Browsers that abandon a multipart upload leave parts that cost money.
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                    expired_object_delete_marker=False,
                ),
                s3.LifecycleRule(
                    id="expire-unclaimed-training-runs",
                    prefix=TRAINING_RUNS,
                    expiration=Duration.days(TRAINING_RUNS_EXPIRE_DAYS),
                ),
                s3.LifecycleRule(
                    id="expire-compute-logs",
                    prefix=COMPUTE_LOGS,
                    expiration=Duration.days(settings.log_retention_days),
                ),
            ],
        )
        # Refuse uploads that would not be encrypted with this environment's CMK (a client
        # that names another key, or SSE-S3, would bypass the key's access control).
        self.video_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DenyWrongEncryptionKey",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=[self.video_bucket.arn_for_objects("*")],
                conditions={
                    "StringNotEqualsIfExists": {
                        "s3:x-amz-server-side-encryption-aws-kms-key-id": self.data_key.key_arn
                    }
                },
            )
        )
        accept(
            self.video_bucket,
            [
                Accepted(
                    "HIPAA.Security-S3BucketReplicationEnabled",
                    "Cross-region replication would copy PHI out of the region the hospital "
                    "approved; durability comes from S3 (11 nines) plus versioning. Enable it "
                    "per environment when the data-processing agreement allows a second region.",
                ),
                Accepted(
                    "CKV_AWS_144",
                    "Cross-region replication intentionally off: PHI stays in one approved "
                    "region; versioning protects against deletion.",
                ),
            ],
        )

        # --- image registry: CI pushes immutable, scanned images here. It lives in this stack
        # (not compute) so the first image can be pushed before any service wants to run it.
        self.repository = ecr.Repository(
            self,
            "ImageRepository",
            repository_name=f"{settings.prefix}/surg-assets",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS,
            removal_policy=removal,
            empty_on_delete=not settings.deletion_protection,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="keep the last 50 images",
                    max_image_count=50,
                    rule_priority=1,
                )
            ],
        )
        CfnOutput(self, "RepositoryUri", value=self.repository.repository_uri)
        CfnOutput(self, "VideoBucketName", value=self.video_bucket.bucket_name)

        # --- PostgreSQL: the catalog and Dagster's run/event/schedule storage ---
        # Two accounts: the admin (master user, used only by rotation and
        # deploy/bootstrap_database.py) and the application role every service uses.
        self.admin_secret = rds.DatabaseSecret(
            self,
            "DatabaseAdminSecret",
            username="surg_admin",
            secret_name=f"{settings.prefix}/database-admin",
            encryption_key=self.data_key,
        )
        self.database_secret = rds.DatabaseSecret(
            self,
            "DatabaseSecret",
            username=APP_DATABASE_USER,
            secret_name=f"{settings.prefix}/database",
            encryption_key=self.data_key,
            master_secret=self.admin_secret,
        )
        # RDS publishes its logs to groups named after the instance; creating them here (rather
        # than letting CDK's retention Lambda adjust them) lets them be KMS-encrypted too.
        instance_identifier = f"{settings.prefix}-db"
        database_log_groups = [
            logs.LogGroup(
                self,
                f"DatabaseLogs{kind.title()}",
                log_group_name=f"/aws/rds/instance/{instance_identifier}/{kind}",
                encryption_key=self.data_key,
                retention=retention(settings.log_retention_days),
                removal_policy=removal,
            )
            for kind in DATABASE_LOG_EXPORTS
        ]
        self.data_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsEncryptsDatabaseLogs",
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal(f"logs.{settings.region}.amazonaws.com")],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:aws:logs:{settings.region}:{settings.account}:"
                            f"log-group:/aws/rds/instance/{instance_identifier}/*"
                        )
                    }
                },
            )
        )
        self.database = rds.DatabaseInstance(
            self,
            "Database",
            instance_identifier=instance_identifier,
            # A full minor version (bare majors are refused for new instances); automatic
            # minor upgrades keep it patched afterwards.
            engine=POSTGRES_ENGINE,
            instance_type=ec2.InstanceType(settings.db_instance_class),
            vpc=network.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[network.database_sg],
            port=POSTGRES_PORT,
            credentials=rds.Credentials.from_secret(self.admin_secret),
            database_name=CATALOG_DATABASE,
            storage_encrypted=True,
            storage_encryption_key=self.data_key,
            allocated_storage=50,
            max_allocated_storage=500,
            storage_type=rds.StorageType.GP3,
            multi_az=settings.db_multi_az,
            publicly_accessible=False,
            iam_authentication=True,
            backup_retention=Duration.days(settings.db_backup_days),
            delete_automated_backups=False,
            deletion_protection=settings.deletion_protection,
            removal_policy=RemovalPolicy.SNAPSHOT
            if settings.deletion_protection
            else RemovalPolicy.DESTROY,
            auto_minor_version_upgrade=True,
            copy_tags_to_snapshot=True,
            monitoring_interval=Duration.seconds(60),
            enable_performance_insights=True,
            performance_insight_encryption_key=self.data_key,
            cloudwatch_logs_exports=list(DATABASE_LOG_EXPORTS),
            parameter_group=rds.ParameterGroup(
                self,
                "DatabaseParameters",
                engine=POSTGRES_ENGINE,
                parameters={
                    # Reject unencrypted client connections; the apps use sslmode=require.
                    "rds.force_ssl": "1",
                    # Connection records feed the audit trail (who connected, from where).
                    "log_connections": "1",
                    "log_disconnections": "1",
                },
            ),
        )
        # AWS Backup keeps daily/monthly snapshots independent of RDS's own retention window,
        # in a vault encrypted with the platform CMK, so dropping the instance loses nothing.
        vault = backup.BackupVault(
            self,
            "BackupVault",
            backup_vault_name=f"{settings.prefix}-vault",
            encryption_key=self.data_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        plan = backup.BackupPlan.daily_monthly1_year_retention(self, "BackupPlan", vault)
        selection = plan.add_selection(
            "Database", resources=[backup.BackupResource.from_rds_database_instance(self.database)]
        )
        accept(
            selection,
            [
                Accepted(
                    "AwsSolutions-IAM4",
                    "AWSBackupServiceRolePolicyForBackup is the AWS-maintained policy the "
                    "backup service needs; AWS updates it with each supported resource type.",
                    applies_to=(
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AWSBackupServiceRolePolicyForBackup",
                    ),
                )
            ],
        )
        self.wandb_secret = secretsmanager.Secret(
            self,
            "WandbApiKey",
            secret_name=f"{settings.prefix}/wandb-api-key",
            description="Weights & Biases API key; set the real value after the first deploy",
            encryption_key=self.data_key,
        )
        accept(
            self.wandb_secret,
            [
                Accepted(
                    "AwsSolutions-SMG4",
                    "Third-party API key: W&B offers no rotation API, so it is rotated by "
                    "hand on the schedule in deploy/README.md.",
                ),
                Accepted(
                    "HIPAA.Security-SecretsManagerRotationEnabled",
                    "Third-party API key rotated by hand (deploy/README.md, 'Rotate keys').",
                ),
            ],
        )
        for group in database_log_groups:
            self.database.node.add_dependency(group)
        # Rotation through Secrets Manager-hosted Lambdas inside the VPC, every 30 days. The
        # application secret alternates between surg_app and a clone, so the password a
        # running task holds stays valid for a full period after each rotation (the weekly
        # service restart in the compute stack picks up the new one well before then).
        rotation_network = {
            "vpc": network.vpc,
            "vpc_subnets": ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            "security_groups": [network.dagster_worker_sg],
        }
        # Rotate through the attachments (they add host and port to the secret, which the
        # rotation functions need, and order the schedules after the instance).
        admin_attached = self.database.secret
        assert admin_attached is not None  # the instance was created from admin_secret
        app_attached = self.database_secret.attach(self.database)
        admin_attached.add_rotation_schedule(
            "Rotation",
            automatically_after=Duration.days(30),
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                **rotation_network
            ),
        )
        app_attached.add_rotation_schedule(
            "Rotation",
            automatically_after=Duration.days(30),
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_multi_user(
                master_secret=admin_attached, **rotation_network
            ),
            # The role exists only after deploy/bootstrap_database.py has run.
            rotate_immediately_on_update=False,
        )
        accept(
            self.database,
            [
                Accepted(
                    "AwsSolutions-RDS11",
                    "The default port is kept: the database is in isolated subnets reachable "
                    "only from three security groups, and a non-default port adds no protection.",
                ),
                Accepted(
                    "AwsSolutions-IAM4",
                    "AmazonRDSEnhancedMonitoringRole is the AWS-maintained policy that lets RDS "
                    "publish OS metrics to CloudWatch; it grants nothing on data.",
                    applies_to=(
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AmazonRDSEnhancedMonitoringRole",
                    ),
                ),
                Accepted(
                    "CKV_AWS_118",
                    "Enhanced monitoring is enabled (60 s); checkov cannot resolve the "
                    "monitoring role created by CDK.",
                ),
            ]
            + (
                []
                if settings.db_multi_az
                else [
                    Accepted(
                        "AwsSolutions-RDS3",
                        "dev holds no patient data and is single-AZ to save cost; staging and "
                        "prod are Multi-AZ.",
                    ),
                    Accepted(
                        "HIPAA.Security-RDSMultiAZSupport",
                        "dev holds no patient data and is single-AZ to save cost; staging and "
                        "prod are Multi-AZ.",
                    ),
                    Accepted("CKV_AWS_157", "dev is single-AZ; staging and prod are Multi-AZ."),
                ]
            )
            + (
                []
                if settings.deletion_protection
                else [
                    Accepted(
                        "AwsSolutions-RDS10",
                        "dev is rebuilt freely from code and holds no patient data.",
                    ),
                    Accepted(
                        "HIPAA.Security-RDSInstanceDeletionProtectionEnabled",
                        "dev is rebuilt freely from code and holds no patient data.",
                    ),
                    Accepted("CKV_AWS_293", "dev is rebuilt freely and holds no patient data."),
                ]
            ),
        )
        accept_cdk_inline_policies(self)
