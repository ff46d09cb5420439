"""CI/CD access stack: the role GitHub Actions assumes through OIDC (no stored AWS keys)."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from surg_deploy.compliance import Accepted, accept, accept_cdk_inline_policies
from surg_deploy.settings import EnvironmentSettings

GITHUB_OIDC_URL = "https://token.actions.githubusercontent.com"
# CDK's default bootstrap qualifier; `cdk deploy` runs through these roles, so the GitHub
# role needs no CloudFormation or resource permissions of its own.
CDK_QUALIFIER = "hnb659fds"


class CiCdStack(Stack):
    """One deploy role per account, assumable only by this repository's workflow runs.

    The trust policy pins the repository and the GitHub environment (``production`` for
    prod, ``staging`` otherwise), so a workflow on a fork or a branch without the protected
    environment's approval cannot obtain credentials for production.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: EnvironmentSettings, **kwargs
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        account, region = settings.account, settings.region
        if settings.github_oidc_provider_arn:
            # Only one provider per URL may exist in an account; reuse the organisation's.
            provider_arn = settings.github_oidc_provider_arn
        else:
            provider_arn = iam.OidcProviderNative(
                self,
                "GitHubOidc",
                url=GITHUB_OIDC_URL,
                client_ids=["sts.amazonaws.com"],
            ).oidc_provider_arn
        github_environment = "production" if settings.is_prod else "staging"
        role = iam.Role(
            self,
            "GitHubDeployRole",
            role_name=f"{settings.prefix}-github-deploy",
            description="Assumed by GitHub Actions (release.yml) through OIDC",
            assumed_by=iam.FederatedPrincipal(
                provider_arn,
                conditions={
                    "StringEquals": {
                        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                        "token.actions.githubusercontent.com:sub": (
                            f"repo:{settings.github_repository}:environment:{github_environment}"
                        ),
                    }
                },
                assume_role_action="sts:AssumeRoleWithWebIdentity",
            ),
        )
        # `cdk deploy` and asset publishing go through the bootstrap roles.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sts:AssumeRole"],
                resources=[f"arn:aws:iam::{account}:role/cdk-{CDK_QUALIFIER}-*-{account}-{region}"],
            )
        )
        # Push/pull the platform image of this environment only.
        repository_arn = f"arn:aws:ecr:{region}:{account}:repository/{settings.prefix}/surg-assets"
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:BatchGetImage",
                    "ecr:CompleteLayerUpload",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:InitiateLayerUpload",
                    "ecr:PutImage",
                    "ecr:UploadLayerPart",
                ],
                resources=[repository_arn],
            )
        )
        # The retraining step of release.yml starts one-off run tasks and waits for them.
        cluster_arn = f"arn:aws:ecs:{region}:{account}:cluster/{settings.prefix}"
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecs:RunTask"],
                resources=[
                    f"arn:aws:ecs:{region}:{account}:task-definition/{settings.prefix}-run:*"
                ],
                conditions={"ArnEquals": {"ecs:cluster": cluster_arn}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeTasks", "ecs:TagResource"],
                resources=[f"arn:aws:ecs:{region}:{account}:task/{settings.prefix}/*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecs:ListServices", "ecs:DescribeServices"],
                resources=[
                    cluster_arn,
                    f"arn:aws:ecs:{region}:{account}:service/{settings.prefix}/*",
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[f"arn:aws:iam::{account}:role/{settings.prefix}-compute-RunTask*"],
                conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
            )
        )
        # No resource-level permissions exist for these two calls.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition"],
                resources=["*"],
            )
        )
        accept(
            role,
            [
                Accepted(
                    "AwsSolutions-IAM5",
                    "Wildcards are the CDK bootstrap roles of this account/region, task and "
                    "service ids of this environment's cluster, revisions of the run task "
                    "family, the run task's roles, and the two calls without resource-level "
                    "permissions (ecr:GetAuthorizationToken, ecs:DescribeTaskDefinition).",
                    applies_to=(
                        f"Resource::arn:aws:iam::{account}:role/cdk-{CDK_QUALIFIER}-*-{account}-{region}",
                        f"Resource::arn:aws:ecs:{region}:{account}:task-definition/{settings.prefix}-run:*",
                        f"Resource::arn:aws:ecs:{region}:{account}:task/{settings.prefix}/*",
                        f"Resource::arn:aws:ecs:{region}:{account}:service/{settings.prefix}/*",
                        f"Resource::arn:aws:iam::{account}:role/{settings.prefix}-compute-RunTask*",
                        "Resource::*",
                    ),
                )
            ],
        )
        accept_cdk_inline_policies(self)
        CfnOutput(self, "GitHubDeployRoleArn", value=role.role_arn)
