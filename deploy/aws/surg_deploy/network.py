"""Network stack: a VPC where nothing that touches patient video has a public address."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from surg_deploy.compliance import Accepted, accept, accept_cdk_inline_policies, retention
from surg_deploy.settings import EnvironmentSettings

# Ports of the platform's services; security groups open exactly these.
WEB_APP_PORT = 8000
DAGSTER_WEBSERVER_PORT = 3000
POSTGRES_PORT = 5432
HTTPS_PORT = 443


class NetworkStack(Stack):
    """VPC, VPC endpoints and the security groups that encode the platform's allowed flows.

    Subnets: ``public`` holds only the NAT gateways; ``private`` (egress through NAT) holds all
    compute; ``isolated`` (no route out at all) holds the database.

    Flows (everything else is denied):
        hospital network --443--> load balancer --8000--> web app
                                                --3000--> Dagster webserver
        web app, Dagster services, run workers --5432--> PostgreSQL
        compute --443--> VPC endpoints (S3, KMS, ECR, Logs, Secrets Manager, ECS, STS)
        compute --443--> NAT (W&B, the LLM endpoint, package-free: images come from ECR)
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: EnvironmentSettings, **kwargs
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        removal = RemovalPolicy.RETAIN if settings.deletion_protection else RemovalPolicy.DESTROY

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(settings.vpc_cidr),
            # Explicit AZs keep the synthesis offline and deterministic (no context lookup).
            availability_zones=[f"{settings.region}a", f"{settings.region}b"],
            nat_gateways=settings.nat_gateways,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public",
                    subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=24,
                    # Only NAT gateways live here; they use Elastic IPs, not auto-assigned ones.
                    map_public_ip_on_launch=False,
                ),
                ec2.SubnetConfiguration(
                    name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
                ec2.SubnetConfiguration(
                    name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
        )

        # Flow logs record every accepted and rejected connection: the network half of the
        # audit trail (who talked to the database, what left through the NAT).
        flow_log_key = kms.Key(
            self,
            "FlowLogKey",
            alias=f"alias/{settings.prefix}-flow-logs",
            description="Encrypts the VPC flow log group",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        flow_log_key.add_to_resource_policy(
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
        flow_log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            log_group_name=f"/{settings.prefix}/vpc-flow-logs",
            encryption_key=flow_log_key,
            retention=retention(settings.log_retention_days),
            removal_policy=removal,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )

        # Keep AWS API traffic off the internet: S3 through a gateway endpoint (free), the rest
        # through interface endpoints reachable only from inside the VPC.
        self.vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        self.endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="VPC interface endpoints: HTTPS from inside the VPC only",
            allow_all_outbound=False,
        )
        self.endpoint_security_group.add_ingress_rule(
            # The literal range (not the VPC's CidrBlock attribute) so scanners can evaluate it.
            ec2.Peer.ipv4(settings.vpc_cidr),
            ec2.Port.tcp(HTTPS_PORT),
            "AWS API calls from platform compute",
        )
        for name, service in {
            "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
            "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
            "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
            "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
            "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
            "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,
            "EcsAgent": ec2.InterfaceVpcEndpointAwsService.ECS_AGENT,
            "EcsTelemetry": ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY,
            "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
        }.items():
            self.vpc.add_interface_endpoint(
                f"{name}Endpoint",
                service=service,
                private_dns_enabled=True,
                # open=False: the group above already carries the one ingress rule needed.
                open=False,
                security_groups=[self.endpoint_security_group],
                subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            )

        # --- security groups: one per role, rules reference groups, not address ranges ---
        self.load_balancer_sg = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=self.vpc,
            description="Internal ALB: HTTPS from the hospital network only",
            allow_all_outbound=False,
        )
        for cidr in settings.client_cidrs:
            self.load_balancer_sg.add_ingress_rule(
                ec2.Peer.ipv4(cidr), ec2.Port.tcp(HTTPS_PORT), f"HTTPS from hospital {cidr}"
            )

        self.web_app_sg = ec2.SecurityGroup(
            self,
            "WebAppSecurityGroup",
            vpc=self.vpc,
            description="surg web app (FastAPI) tasks",
            allow_all_outbound=True,
        )
        self.web_app_sg.add_ingress_rule(
            self.load_balancer_sg, ec2.Port.tcp(WEB_APP_PORT), "Web app from the ALB"
        )
        self.load_balancer_sg.add_egress_rule(
            self.web_app_sg, ec2.Port.tcp(WEB_APP_PORT), "ALB to the web app"
        )

        self.dagster_webserver_sg = ec2.SecurityGroup(
            self,
            "DagsterWebserverSecurityGroup",
            vpc=self.vpc,
            description="Dagster webserver tasks",
            allow_all_outbound=True,
        )
        self.dagster_webserver_sg.add_ingress_rule(
            self.load_balancer_sg, ec2.Port.tcp(DAGSTER_WEBSERVER_PORT), "Dagster UI from the ALB"
        )
        self.load_balancer_sg.add_egress_rule(
            self.dagster_webserver_sg, ec2.Port.tcp(DAGSTER_WEBSERVER_PORT), "ALB to Dagster UI"
        )

        # Daemon, run workers and GPU step tasks accept no connections at all.
        self.dagster_worker_sg = ec2.SecurityGroup(
            self,
            "DagsterWorkerSecurityGroup",
            vpc=self.vpc,
            description="Dagster daemon, run workers and GPU step tasks (no inbound)",
            allow_all_outbound=True,
        )

        self.database_sg = ec2.SecurityGroup(
            self,
            "DatabaseSecurityGroup",
            vpc=self.vpc,
            description="PostgreSQL: catalog and Dagster storage",
            allow_all_outbound=False,
        )
        for peer, what in (
            (self.web_app_sg, "web app"),
            (self.dagster_webserver_sg, "Dagster webserver"),
            (self.dagster_worker_sg, "Dagster daemon and runs"),
        ):
            self.database_sg.add_ingress_rule(
                peer, ec2.Port.tcp(POSTGRES_PORT), f"PostgreSQL from the {what}"
            )

        for subnet in self.vpc.public_subnets:
            accept(
                subnet,
                [
                    Accepted(
                        "HIPAA.Security-VPCNoUnrestrictedRouteToIGW",
                        "Only public subnets route to the internet gateway, and they hold only "
                        "the NAT gateways; compute and database subnets have no such route.",
                    )
                ],
            )
        accept_cdk_inline_policies(self)
        accept(
            self.vpc,
            [
                Accepted(
                    "CKV_AWS_130",
                    "Public subnets hold only NAT gateways, which need public addresses; "
                    "MapPublicIpOnLaunch is disabled so nothing else gets one.",
                ),
            ],
        )
