"""Per-environment settings of the AWS deployment (dev / staging / prod, one AWS account each).

The seed recommends one account per environment so that a mistake in dev can never touch
patient video in prod. Account ids and the hospital-specific values (network ranges, domain,
certificate, alert address) are read from CDK context so a cloud team deploys without editing
code: ``cdk deploy -c env=prod -c prod.account=123456789012 -c prod.certificate_arn=...``.
The defaults below are placeholders that only make the app synthesise offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# Obviously fake placeholder accounts: a template synthesised with them cannot deploy.
_PLACEHOLDER_ACCOUNTS = {"dev": "111111111111", "staging": "222222222222", "prod": "333333333333"}


@dataclass(frozen=True)
class EnvironmentSettings:
    """Everything that differs between dev, staging and prod.

    Attributes:
        name: Environment name, also the prefix of every resource name (``surg-<name>-...``).
        account: AWS account id that holds this environment.
        region: AWS region; the video bucket and database never leave it.
        vpc_cidr: Address range of the platform VPC; must not overlap the hospital network.
        nat_gateways: One per AZ in prod so losing an AZ does not cut off W&B/LLM egress.
        client_cidrs: Hospital networks (VPN / Direct Connect) allowed to reach the internal
            load balancer. Never 0.0.0.0/0: the platform is not on the internet.
        domain_name: Host name of the web app; Dagster's UI is served on ``dagster.<domain>``.
        certificate_arn: ACM certificate for the HTTPS listener.
        alert_email: Receives budget and security alarms.
        db_instance_class: RDS instance class (``t4g.medium`` style, without the ``db.`` prefix).
        db_multi_az: Standby in a second AZ (prod and staging).
        db_backup_days: Automated backup retention (point-in-time restore window).
        deletion_protection: Protects the database and retains buckets/keys on stack deletion.
        gpu_instance_type: EC2 type of the GPU capacity providers; must hold one GPU step
            (surg_assets/placement.py asks for 4 vCPU and 16 GiB next to the GPU).
        gpu_max_instances: Upper bound of each GPU auto scaling group (cost ceiling).
        log_retention_days: CloudWatch log retention; HIPAA asks for six years of audit records.
        raw_video_ia_days: Days after which raw videos move to Intelligent-Tiering.
        raw_video_archive_days: Days after which raw videos move to Glacier Flexible Retrieval.
        noncurrent_version_days: How long an overwritten/deleted video stays restorable.
        trail_retention_days: Object Lock retention of CloudTrail files.
        trail_lock_mode: ``COMPLIANCE`` in prod (nobody, not even root, shortens it),
            else ``GOVERNANCE``.
        transfer_acceleration: S3 Transfer Acceleration for uploads from distant sites.
        monthly_budget_usd: AWS Budgets limit; alarms at 80 % actual and 100 % forecast.
        create_config_recorder: False when the account already has an AWS Config recorder
            (only one per region is allowed, often owned by the organisation).
        github_repository: ``owner/name`` whose workflows may assume the deploy role.
        github_oidc_provider_arn: The account's existing GitHub OIDC provider, if any (only
            one per URL may exist); empty to create it in the cicd stack.
    """

    name: str
    account: str
    region: str = "eu-central-1"
    vpc_cidr: str = "10.40.0.0/16"
    nat_gateways: int = 1
    client_cidrs: tuple[str, ...] = ("10.0.0.0/8",)
    domain_name: str = "surg.hospital.example"
    certificate_arn: str = ""
    alert_email: str = "cloud-team@hospital.example"
    db_instance_class: str = "t4g.medium"
    db_multi_az: bool = False
    db_backup_days: int = 7
    deletion_protection: bool = True
    gpu_instance_type: str = "g5.2xlarge"
    gpu_max_instances: int = 2
    log_retention_days: int = 2192
    raw_video_ia_days: int = 30
    raw_video_archive_days: int = 180
    noncurrent_version_days: int = 90
    trail_retention_days: int = 365
    trail_lock_mode: str = "GOVERNANCE"
    transfer_acceleration: bool = False
    monthly_budget_usd: int = 500
    create_config_recorder: bool = True
    github_repository: str = "hospital-it/surg-assets"
    github_oidc_provider_arn: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Resource-name prefix, e.g. ``surg-prod``."""
        return f"surg-{self.name}"

    @property
    def is_prod(self) -> bool:
        """True for the environment that holds real patient video."""
        return self.name == "prod"

    @property
    def resolved_certificate_arn(self) -> str:
        """The configured certificate, or a well-formed placeholder so the app synthesises."""
        return self.certificate_arn or (
            f"arn:aws:acm:{self.region}:{self.account}:certificate/"
            "00000000-0000-0000-0000-000000000000"
        )


DEFAULTS: dict[str, EnvironmentSettings] = {
    "dev": EnvironmentSettings(
        name="dev",
        account=_PLACEHOLDER_ACCOUNTS["dev"],
        vpc_cidr="10.40.0.0/16",
        db_backup_days=7,
        # dev is rebuilt freely and holds only synthetic or de-identified video.
        deletion_protection=False,
        gpu_max_instances=1,
        log_retention_days=365,
        noncurrent_version_days=30,
        trail_retention_days=90,
        monthly_budget_usd=600,
    ),
    "staging": EnvironmentSettings(
        name="staging",
        account=_PLACEHOLDER_ACCOUNTS["staging"],
        vpc_cidr="10.41.0.0/16",
        db_multi_az=True,
        db_backup_days=14,
        gpu_max_instances=2,
        monthly_budget_usd=1000,
    ),
    "prod": EnvironmentSettings(
        name="prod",
        account=_PLACEHOLDER_ACCOUNTS["prod"],
        vpc_cidr="10.42.0.0/16",
        nat_gateways=2,
        db_instance_class="m7g.large",
        db_multi_az=True,
        db_backup_days=35,
        gpu_max_instances=6,
        noncurrent_version_days=365,
        trail_retention_days=2192,
        trail_lock_mode="COMPLIANCE",
        monthly_budget_usd=2500,
    ),
}

# Context keys a cloud team may override per environment, as "<env>.<key>".
_STRING_KEYS = (
    "account",
    "region",
    "vpc_cidr",
    "domain_name",
    "certificate_arn",
    "alert_email",
    "github_repository",
    "github_oidc_provider_arn",
)
_INT_KEYS = ("monthly_budget_usd", "gpu_max_instances", "nat_gateways")
_BOOL_KEYS = ("transfer_acceleration", "create_config_recorder")
CONTEXT_KEYS = (*_STRING_KEYS, *_INT_KEYS, *_BOOL_KEYS, "client_cidrs")


def settings_for(name: str, context: dict[str, Any] | None = None) -> EnvironmentSettings:
    """Return the settings of one environment with CDK-context overrides applied.

    Args:
        name: ``dev``, ``staging`` or ``prod``.
        context: Flat CDK context (``{"prod.account": "1234..."}``); values from ``-c`` are strings.

    Raises:
        ValueError: ``name`` is not a known environment.
    """
    if name not in DEFAULTS:
        raise ValueError(
            f"Unknown environment {name!r}; pass -c env=dev, -c env=staging or -c env=prod."
        )
    context = context or {}
    overrides: dict[str, Any] = {}
    for key in _STRING_KEYS + _INT_KEYS + _BOOL_KEYS:
        value = context.get(f"{name}.{key}")
        if value is None:
            continue
        if key in _INT_KEYS:
            value = int(value)
        elif key in _BOOL_KEYS:
            value = str(value).lower() in ("1", "true", "yes")
        overrides[key] = value
    client_cidrs = context.get(f"{name}.client_cidrs")
    if client_cidrs:
        overrides["client_cidrs"] = tuple(c.strip() for c in str(client_cidrs).split(","))
    settings = replace(DEFAULTS[name], **overrides)
    if "0.0.0.0/0" in settings.client_cidrs:
        raise ValueError(
            f"{name}.client_cidrs contains 0.0.0.0/0; list the hospital's VPN or Direct Connect "
            "ranges instead, the platform must not be reachable from the internet."
        )
    return settings
