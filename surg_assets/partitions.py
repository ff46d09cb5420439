"""Partitions: one dynamic partition per case (key = the server-generated case id)."""

import dagster as dg

cases = dg.DynamicPartitionsDefinition(name="cases")
