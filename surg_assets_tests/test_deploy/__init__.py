"""Tests of deploy/: CDK stacks, Dagster instance files, Kubernetes, CI workflows."""
