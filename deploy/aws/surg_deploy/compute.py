"""Compute stack: ECS cluster, services, run-launcher task definitions and least-privilege roles."""

from __future__ import annotations

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from surg_deploy.compliance import Accepted, accept, accept_cdk_inline_policies, retention
from surg_deploy.data import (
    CATALOG_DATABASE,
    COMPUTE_LOGS,
    DAGSTER_DATABASE,
    DATASETS,
    PLATFORM_PREFIXES,
    PROCESSED_METADATA,
    PROCESSED_VIDEOS,
    RAW_VIDEOS,
    TRAINING_RUNS,
    DataStack,
)
from surg_deploy.network import DAGSTER_WEBSERVER_PORT, WEB_APP_PORT, NetworkStack
from surg_deploy.settings import EnvironmentSettings

# The container the run launcher and the ECS step executor address by name; the GPU step
# task uses the same name because the executor overrides that container's command.
RUN_CONTAINER = "run"
# Names the GPU op tags in surg_assets/placement.py refer to (one environment per account,
# so they need no environment prefix).
GPU_CAPACITY_PROVIDERS = {"gpu": "surg-gpu", "gpu-spot": "surg-gpu-spot"}
GPU_STEP_FAMILY = "surg-gpu-step"

# Where the image (deploy/Dockerfile) keeps the production dagster.yaml.
DAGSTER_HOME = "/opt/dagster/dagster_home"


class ComputeStack(Stack):
    """Everything that runs code: Dagster webserver/daemon, run workers, GPU steps, the web app.

    CPU work runs on Fargate (no hosts to patch); GPU steps run on EC2 GPU instances through
    two capacity providers, on-demand for inference and spot for interruptible training.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: EnvironmentSettings,
        network: NetworkStack,
        data: DataStack,
        image_tag: str,
        start_services: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        removal = RemovalPolicy.RETAIN if settings.deletion_protection else RemovalPolicy.DESTROY
        vpc = network.vpc
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        # --- logs: one KMS key, one group per service, retention from settings ---
        logs_key = kms.Key(
            self,
            "LogsKey",
            alias=f"alias/{settings.prefix}-compute-logs",
            description="Encrypts the platform's CloudWatch log groups",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        logs_key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal(f"logs.{settings.region}.amazonaws.com")],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:aws:logs:{settings.region}:{settings.account}:log-group:*"
                        )
                    }
                },
            )
        )

        def log_group(name: str) -> logs.LogGroup:
            return logs.LogGroup(
                self,
                f"{name.title().replace('-', '')}Logs",
                log_group_name=f"/{settings.prefix}/{name}",
                encryption_key=logs_key,
                retention=retention(settings.log_retention_days),
                removal_policy=removal,
            )

        image = ecs.ContainerImage.from_ecr_repository(data.repository, tag=image_tag)

        # --- cluster and capacity ---
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=settings.prefix,
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
            enable_fargate_capacity_providers=True,
        )
        gpu_instance_sg = ec2.SecurityGroup(
            self,
            "GpuInstanceSecurityGroup",
            vpc=vpc,
            description="GPU container instances (ECS agent only; tasks use awsvpc)",
            allow_all_outbound=True,
        )
        self.gpu_capacity_providers: dict[str, ecs.AsgCapacityProvider] = {}
        for kind, spot in (("gpu", False), ("gpu-spot", True)):
            self.gpu_capacity_providers[kind] = self._gpu_capacity_provider(
                kind, spot=spot, security_group=gpu_instance_sg, subnets=private
            )

        # Tasks that name no capacity run on Fargate; GPU steps name theirs in their tags.
        self.cluster.add_default_capacity_provider_strategy(
            [ecs.CapacityProviderStrategy(capacity_provider="FARGATE", weight=1)]
        )

        # --- shared configuration of every container (DESIGN.md section 4) ---
        database = data.database
        # Secrets are imported by ARN, without their key, so CDK's automatic grants stay in
        # this stack's IAM policies instead of editing the data stack's key policy (a cycle).
        database_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "DatabaseSecretRef", data.database_secret.secret_arn
        )
        wandb_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "WandbSecretRef", data.wandb_secret.secret_arn
        )
        environment = {
            "SURG_ENV": "prod",
            "SURG_DEPLOYMENT": settings.name,
            "SURG_S3_BUCKET": data.video_bucket.bucket_name,
            "SURG_S3_PREFIX": "",
            "SURG_S3_KMS_KEY_ID": data.data_key.key_arn,
            "SURG_DB_HOST": database.db_instance_endpoint_address,
            "SURG_DB_PORT": database.db_instance_endpoint_port,
            "SURG_CATALOG_DB": CATALOG_DATABASE,
            "DAGSTER_PG_HOST": database.db_instance_endpoint_address,
            "DAGSTER_PG_DB": DAGSTER_DATABASE,
            "DAGSTER_HOME": DAGSTER_HOME,
            "DAGSTER_COMPUTE_LOG_BUCKET": data.video_bucket.bucket_name,
            "DAGSTER_COMPUTE_LOG_PREFIX": COMPUTE_LOGS.rstrip("/"),
            "SURG_ECS_CLUSTER": self.cluster.cluster_name,
            "SURG_GPU_CAPACITY_PROVIDER": self.gpu_capacity_providers["gpu"].capacity_provider_name,
            "SURG_GPU_SPOT_CAPACITY_PROVIDER": self.gpu_capacity_providers[
                "gpu-spot"
            ].capacity_provider_name,
            "AWS_REGION": settings.region,
        }
        # Passwords reach containers only as ECS secrets (resolved at task start), never as
        # plain environment values in the task definition.
        secrets = {
            "DAGSTER_PG_USER": ecs.Secret.from_secrets_manager(database_secret, "username"),
            "DAGSTER_PG_PASSWORD": ecs.Secret.from_secrets_manager(database_secret, "password"),
            "WANDB_API_KEY": ecs.Secret.from_secrets_manager(wandb_secret),
        }

        # --- task definitions ---
        # GPU steps: EC2 launch type with one GPU; the ECS step executor starts these per step.
        self.gpu_step_task = ecs.Ec2TaskDefinition(
            self,
            "GpuStepTask",
            family=GPU_STEP_FAMILY,
            network_mode=ecs.NetworkMode.AWS_VPC,
        )
        self.gpu_step_task.add_container(
            RUN_CONTAINER,
            image=image,
            # Step tags (ecs/cpu, ecs/memory) size the task; this is the floor per GPU.
            memory_reservation_mib=14_000,
            cpu=3_072,
            gpu_count=1,
            environment=environment,
            secrets=secrets,
            logging=ecs.LogDriver.aws_logs(stream_prefix="step", log_group=log_group("gpu-steps")),
            readonly_root_filesystem=False,
        )
        # Runs (EcsRunLauncher): one Fargate task per Dagster run; GPU steps fan out from here.
        self.run_task = ecs.FargateTaskDefinition(
            self,
            "RunTask",
            family=f"{settings.prefix}-run",
            cpu=2048,
            memory_limit_mib=8192,
            ephemeral_storage_gib=100,
        )
        self.run_task.add_container(
            RUN_CONTAINER,
            image=image,
            environment={
                **environment,
                "SURG_GPU_STEP_TASK_DEFINITION": self.gpu_step_task.task_definition_arn,
            },
            secrets=secrets,
            logging=ecs.LogDriver.aws_logs(stream_prefix="run", log_group=log_group("runs")),
        )
        run_environment = {
            **environment,
            "DAGSTER_RUN_TASK_DEFINITION": self.run_task.task_definition_arn,
        }
        webserver_task = self._fargate_task(
            "DagsterWebserver",
            cpu=1024,
            memory=2048,
            image=image,
            command=[
                "dagster-webserver",
                "--host",
                "0.0.0.0",
                "--port",
                str(DAGSTER_WEBSERVER_PORT),
                "--workspace",
                "workspace.yaml",
            ],
            port=DAGSTER_WEBSERVER_PORT,
            environment=run_environment,
            secrets=secrets,
            log_group=log_group("dagster-webserver"),
        )
        daemon_task = self._fargate_task(
            "DagsterDaemon",
            cpu=1024,
            memory=2048,
            image=image,
            command=["dagster-daemon", "run", "--workspace", "workspace.yaml"],
            port=None,
            environment=run_environment,
            secrets=secrets,
            log_group=log_group("dagster-daemon"),
        )
        web_task = self._fargate_task(
            "WebApp",
            cpu=1024,
            memory=2048,
            image=image,
            command=["surg", "serve", "--host", "0.0.0.0", "--port", str(WEB_APP_PORT)],
            port=WEB_APP_PORT,
            environment=environment,
            secrets=secrets,
            log_group=log_group("web-app"),
        )

        # One-off task that creates the databases and the application role
        # (deploy/bootstrap_database.py); the only task that ever sees the admin password.
        admin_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "DatabaseAdminSecretRef", data.admin_secret.secret_arn
        )
        db_admin_task = self._fargate_task(
            "DbAdmin",
            cpu=256,
            memory=512,
            image=image,
            command=["python", "/opt/surg/bootstrap_database.py"],
            port=None,
            environment=environment,
            secrets={
                **secrets,
                "SURG_DB_ADMIN_USER": ecs.Secret.from_secrets_manager(admin_secret, "username"),
                "SURG_DB_ADMIN_PASSWORD": ecs.Secret.from_secrets_manager(admin_secret, "password"),
            },
            log_group=log_group("db-admin"),
        )
        # Execution roles decrypt the secrets at task start, and only through Secrets Manager.
        all_tasks = [
            self.gpu_step_task,
            self.run_task,
            webserver_task,
            daemon_task,
            web_task,
            db_admin_task,
        ]
        for task in all_tasks:
            task.obtain_execution_role().add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[data.data_key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{settings.region}.amazonaws.com"
                        }
                    },
                )
            )

        # --- least-privilege task roles ---
        bucket = data.video_bucket
        # Web app: browsers upload raw video through presigned URLs signed with this role,
        # and play back processed results; it never touches datasets or models.
        bucket.grant_put(web_task.task_role, f"{RAW_VIDEOS}*")
        bucket.grant_read(web_task.task_role, f"{PROCESSED_VIDEOS}*")
        bucket.grant_read(web_task.task_role, f"{PROCESSED_METADATA}*")
        web_task.task_role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[bucket.arn_for_objects(f"{RAW_VIDEOS}*")],
            )
        )
        # Runs and GPU steps read and write every platform prefix of the bucket.
        for role in (self.run_task.task_role, self.gpu_step_task.task_role):
            for prefix in (*PLATFORM_PREFIXES, COMPUTE_LOGS):
                bucket.grant_read_write(role, f"{prefix}*")
            role.add_to_principal_policy(
                _list_bucket(bucket.bucket_arn, RAW_VIDEOS, DATASETS, TRAINING_RUNS)
            )
        # Daemon: sensors list new uploads; the run launcher starts run tasks.
        daemon_task.task_role.add_to_principal_policy(_list_bucket(bucket.bucket_arn, RAW_VIDEOS))
        bucket.grant_read(daemon_task.task_role, f"{COMPUTE_LOGS}*")
        bucket.grant_read(webserver_task.task_role, f"{COMPUTE_LOGS}*")
        # The webserver needs this too: terminating a run from the UI stops its task.
        self._allow_launching(daemon_task.task_role, self.run_task)
        self._allow_launching(webserver_task.task_role, self.run_task)
        self._allow_launching(self.run_task.task_role, self.gpu_step_task)

        # --- services ---
        def service(
            name: str, task: ecs.FargateTaskDefinition, sg: ec2.ISecurityGroup, count: int
        ) -> ecs.FargateService:
            return ecs.FargateService(
                self,
                name,
                cluster=self.cluster,
                task_definition=task,
                # Zero on the very first deploy: the databases do not exist until the
                # one-off dbadmin task has run (deploy/README.md, section 2).
                desired_count=count if start_services else 0,
                security_groups=[sg],
                vpc_subnets=private,
                assign_public_ip=False,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
                # No interactive shells into containers that handle patient video.
                enable_execute_command=False,
                min_healthy_percent=100 if count > 1 else 0,
                capacity_provider_strategies=[
                    ecs.CapacityProviderStrategy(capacity_provider="FARGATE", weight=1)
                ],
            )

        web_replicas = 2 if settings.is_prod else 1
        web_service = service("WebAppService", web_task, network.web_app_sg, web_replicas)
        webserver_service = service(
            "DagsterWebserverService", webserver_task, network.dagster_webserver_sg, 1
        )
        # Exactly one daemon: two would evaluate every sensor and schedule twice.
        daemon_service = service("DagsterDaemonService", daemon_task, network.dagster_worker_sg, 1)
        self._restart_weekly([web_service, webserver_service, daemon_service])

        # --- internal HTTPS load balancer (reachable from the hospital network only) ---
        load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            internet_facing=False,
            vpc_subnets=private,
            security_group=network.load_balancer_sg,
            drop_invalid_header_fields=True,
            deletion_protection=settings.deletion_protection,
        )
        load_balancer.log_access_logs(data.access_log_bucket, prefix="alb")
        listener = load_balancer.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(settings.resolved_certificate_arn)],
            ssl_policy=elbv2.SslPolicy.TLS13_RES,
            open=False,
        )
        listener.add_targets(
            "WebApp",
            port=WEB_APP_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[web_service],
            health_check=elbv2.HealthCheck(path="/", healthy_http_codes="200-399"),
        )
        listener.add_targets(
            "DagsterWebserver",
            priority=10,
            conditions=[elbv2.ListenerCondition.host_headers([f"dagster.{settings.domain_name}"])],
            port=DAGSTER_WEBSERVER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[webserver_service],
            health_check=elbv2.HealthCheck(path="/server_info"),
        )
        accept(
            load_balancer,
            [
                Accepted(
                    "CKV_AWS_103",
                    "The HTTPS listener uses ELBSecurityPolicy-TLS13-1-2-Res (TLS 1.2+ only).",
                ),
                Accepted(
                    "AwsSolutions-ELB2",
                    "Access logging is enabled to the access-log bucket (cross-stack).",
                ),
            ]
            + (
                []
                if settings.deletion_protection
                else [
                    Accepted(
                        "HIPAA.Security-ELBDeletionProtectionEnabled",
                        "dev is rebuilt freely from code.",
                    ),
                    Accepted("CKV_AWS_150", "dev is rebuilt freely from code."),
                ]
            ),
        )
        # Target traffic is plain HTTP inside the VPC; TLS terminates at the ALB.
        accept(
            listener,
            [
                Accepted(
                    "CKV_AWS_2",
                    "The listener is HTTPS; checkov flags the HTTP target groups behind it, "
                    "which stay inside the VPC between security groups.",
                ),
            ],
        )

        self._accept_reviewed_permissions(all_tasks)

        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        CfnOutput(self, "RunTaskDefinition", value=self.run_task.task_definition_arn)
        CfnOutput(self, "GpuStepTaskDefinition", value=self.gpu_step_task.task_definition_arn)
        CfnOutput(self, "LoadBalancerDns", value=load_balancer.load_balancer_dns_name)

    def _restart_weekly(self, services: list[ecs.FargateService]) -> None:
        """Roll every long-running service once a week (Sunday 03:00 UTC).

        Tasks receive database credentials at start; the weekly roll keeps every task younger
        than the 30-day rotation period of the alternating-user secret, so no task ever holds
        a password that rotation has replaced. It also picks up patched base images.
        """
        role = iam.Role(
            self,
            "WeeklyRestartRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="EventBridge Scheduler: force a new deployment of the platform services",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecs:UpdateService"],
                resources=[s.service_arn for s in services],
            )
        )
        for index, svc in enumerate(services):
            scheduler.CfnSchedule(
                self,
                f"WeeklyRestart{index}",
                description="Weekly rolling restart: fresh credentials and base image",
                schedule_expression="cron(0 3 ? * SUN *)",
                schedule_expression_timezone="UTC",
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(
                    mode="FLEXIBLE", maximum_window_in_minutes=30
                ),
                target=scheduler.CfnSchedule.TargetProperty(
                    arn="arn:aws:scheduler:::aws-sdk:ecs:updateService",
                    role_arn=role.role_arn,
                    input=Stack.of(self).to_json_string(
                        {
                            "Cluster": self.cluster.cluster_name,
                            "Service": svc.service_name,
                            "ForceNewDeployment": True,
                        }
                    ),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_retry_attempts=3
                    ),
                ),
            )

    def _accept_reviewed_permissions(self, tasks: list[ecs.TaskDefinition]) -> None:
        """The wildcards left in this stack's IAM policies, each with the reason it is needed."""
        for task in tasks:
            accept(
                task,
                [
                    Accepted(
                        "AwsSolutions-ECS2",
                        "Environment values are non-secret configuration (bucket name, database "
                        "host, ARNs); credentials reach the container only as ECS secrets.",
                    )
                ],
                children=False,
            )
        object_prefixes = "|".join(p.rstrip("/") for p in PLATFORM_PREFIXES)
        accept(
            self,
            [
                Accepted(
                    "AwsSolutions-IAM5",
                    "Object-level access is scoped to one blob-store prefix of the video bucket "
                    "(DESIGN.md section 3); keys below it are case ids, unknown in advance.",
                    applies_to=(
                        "regex:/^Resource::<VideoBucket[0-9A-F]+\\.Arn>\\/("
                        + object_prefixes
                        + "|"
                        + COMPUTE_LOGS.rstrip("/")
                        + ")\\/\\*$/g",
                    ),
                ),
                Accepted(
                    "AwsSolutions-IAM5",
                    "Action groups generated by CDK's bucket/key grants (read = Get*/List*, "
                    "write = Put*/Abort*/DeleteObject*), confined to the prefixes above and "
                    "to the platform CMK.",
                    applies_to=(
                        "Action::s3:GetObject*",
                        "Action::s3:GetBucket*",
                        "Action::s3:List*",
                        "Action::s3:Abort*",
                        "Action::s3:DeleteObject*",
                        "Action::kms:GenerateDataKey*",
                        "Action::kms:ReEncrypt*",
                    ),
                ),
                Accepted(
                    "AwsSolutions-IAM5",
                    "Launchers must address tasks they start (ids unknown in advance) and every "
                    "revision of one task-definition family; both ARNs stay within this "
                    "cluster and family.",
                    applies_to=(
                        "regex:/^Resource::arn:aws:ecs:[a-z0-9-]+:[0-9]+:task\\/<Cluster[0-9A-F]+>\\/\\*$/g",
                        "regex:/^Resource::arn:aws:ecs:[a-z0-9-]+:[0-9]+:task-definition\\/surg-([a-z]+-run|gpu-step):\\*$/g",
                    ),
                ),
                Accepted(
                    "AwsSolutions-IAM5",
                    "Resource '*' only where IAM offers no resource-level permission: "
                    "ecr:GetAuthorizationToken, ecs:DescribeTaskDefinition, "
                    "ec2:DescribeNetworkInterfaces, and the ECS agent's instance calls.",
                    applies_to=("Resource::*", "Action::ecs:Submit*"),
                ),
                Accepted(
                    "AwsSolutions-IAM5",
                    "CDK's capacity-provider wiring lets ECS managed scaling update exactly "
                    "this auto scaling group.",
                    applies_to=(
                        "regex:/^Resource::arn:aws:autoscaling:[a-z0-9-]+:[0-9]+:autoScalingGroup:\\*:autoScalingGroupName\\/<Gpu(Spot)?InstancesASG[0-9A-F]+>$/g",
                    ),
                ),
            ],
        )
        accept_cdk_inline_policies(self)

    def _gpu_capacity_provider(
        self,
        kind: str,
        *,
        spot: bool,
        security_group: ec2.ISecurityGroup,
        subnets: ec2.SubnetSelection,
    ) -> ecs.AsgCapacityProvider:
        """An auto scaling group of ECS GPU instances registered as one capacity provider."""
        settings = self.settings
        name = "GpuSpot" if spot else "Gpu"
        instance_role = iam.Role(
            self,
            f"{name}InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ECS agent on GPU instances (tasks get their own task roles)",
        )
        launch_template = ec2.LaunchTemplate(
            self,
            f"{name}LaunchTemplate",
            instance_type=ec2.InstanceType(settings.gpu_instance_type),
            machine_image=ecs.EcsOptimizedImage.amazon_linux2(ecs.AmiHardwareType.GPU),
            security_group=security_group,
            require_imdsv2=True,
            detailed_monitoring=True,
            associate_public_ip_address=False,
            role=instance_role,
            user_data=ec2.UserData.for_linux(),
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    # Encrypted with the account's EBS key: the volume holds only transient
                    # frames of a step; a CMK here needs the auto scaling service-linked role
                    # in the key policy, which does not exist before the first group.
                    volume=ec2.BlockDeviceVolume.ebs(
                        200, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                    ),
                )
            ],
            spot_options=ec2.LaunchTemplateSpotOptions(
                interruption_behavior=ec2.SpotInstanceInterruption.TERMINATE
            )
            if spot
            else None,
        )
        group = autoscaling.AutoScalingGroup(
            self,
            f"{name}Instances",
            vpc=self.cluster.vpc,
            vpc_subnets=subnets,
            launch_template=launch_template,
            # Scale to zero: GPUs cost money only while a GPU step is queued or running.
            min_capacity=0,
            max_capacity=settings.gpu_max_instances,
            new_instances_protected_from_scale_in=False,
        )
        accept(
            group,
            [
                Accepted(
                    "AwsSolutions-AS3",
                    "Scaling is driven by ECS managed scaling; its CloudWatch alarms and the "
                    "capacity provider events are the notification path.",
                ),
                Accepted(
                    "HIPAA.Security-AutoScalingGroupELBHealthCheckRequired",
                    "GPU instances serve no load balancer; ECS replaces failed tasks.",
                ),
            ],
        )
        provider = ecs.AsgCapacityProvider(
            self,
            f"{name}CapacityProvider",
            capacity_provider_name=GPU_CAPACITY_PROVIDERS[kind],
            auto_scaling_group=group,
            enable_managed_termination_protection=False,
            enable_managed_scaling=True,
            target_capacity_percent=100,
            # ECS managed draining replaces CDK's legacy drain-hook Lambda and SNS topic.
            enable_managed_draining=True,
            # Spot interruptions drain the instance so a training step fails fast and retries.
            spot_instance_draining=spot,
        )
        self.cluster.add_asg_capacity_provider(provider)
        accept(
            instance_role,
            [
                Accepted(
                    "CKV_AWS_111",
                    "CDK's standard ECS-agent policy (register the instance, submit task state, "
                    "poll for work); ECS offers no resource scoping for these agent calls.",
                )
            ],
        )
        return provider

    def _fargate_task(
        self,
        name: str,
        *,
        cpu: int,
        memory: int,
        image: ecs.ContainerImage,
        command: list[str],
        port: int | None,
        environment: dict[str, str],
        secrets: dict[str, ecs.Secret],
        log_group: logs.ILogGroup,
    ) -> ecs.FargateTaskDefinition:
        """A one-container Fargate task definition with its own task and execution roles."""
        task = ecs.FargateTaskDefinition(
            self,
            f"{name}Task",
            family=f"{self.settings.prefix}-{name.lower()}",
            cpu=cpu,
            memory_limit_mib=memory,
        )
        container = task.add_container(
            name,
            image=image,
            command=command,
            environment=environment,
            secrets=secrets,
            logging=ecs.LogDriver.aws_logs(stream_prefix=name.lower(), log_group=log_group),
        )
        if port is not None:
            container.add_port_mappings(ecs.PortMapping(container_port=port))
        return task

    def _allow_launching(self, role: iam.IRole, task: ecs.TaskDefinition) -> None:
        """Let ``role`` start, watch and stop tasks of exactly one task definition family."""
        cluster_arn = self.cluster.cluster_arn
        family_arn = self.format_arn(
            service="ecs", resource="task-definition", resource_name=f"{task.family}:*"
        )
        task_arn = self.format_arn(
            service="ecs", resource="task", resource_name=f"{self.cluster.cluster_name}/*"
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecs:RunTask"],
                resources=[family_arn],
                conditions={"ArnEquals": {"ecs:cluster": cluster_arn}},
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"],
                resources=[task_arn],
            )
        )
        # These read-only calls support no resource-level permissions in IAM.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"],
                resources=["*"],
            )
        )
        task.grant_run(role)


def _list_bucket(bucket_arn: str, *prefixes: str) -> iam.PolicyStatement:
    """s3:ListBucket restricted to key prefixes (listing reveals case ids, so scope it)."""
    return iam.PolicyStatement(
        actions=["s3:ListBucket"],
        resources=[bucket_arn],
        conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
    )
