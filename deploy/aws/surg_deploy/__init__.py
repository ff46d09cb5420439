"""AWS CDK app of surg-assets: the HIPAA-grade environment that holds patient video.

One stack per concern and environment: ``surg-<env>-network``, ``-data``, ``-compute``,
``-audit``. ``surg_deploy.app.build_app`` assembles them; ``python -m surg_deploy.synth``
synthesises them offline and fails on any unsuppressed cdk-nag finding.
"""
