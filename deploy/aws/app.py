"""Entry point for the CDK CLI (`cdk synth|diff|deploy -c env=prod`), see deploy/README.md."""

from surg_deploy.app import build_app

build_app().synth()
