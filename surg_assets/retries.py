"""How case steps survive transient faults (one policy, applied to every case asset).

botocore already retries each S3 call (``SURG_S3_RETRY_MODE``, ``SURG_S3_MAX_ATTEMPTS``); this
Dagster policy re-runs a whole step when a fault outlasts those attempts (an S3 outage of a few
minutes, a node lost mid-step). Writes are atomic, so a re-run never sees half an object.
Failures a user caused (a corrupt video, a bad setting) are raised with ``allow_retries=False``
and are not retried.
"""

import dagster as dg

CASE_STEP_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3,
    delay=10,
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)
