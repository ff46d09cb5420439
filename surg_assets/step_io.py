"""Handing op outputs from one step to the next through the blob store.

Most case assets write their own files and pass nothing between steps. The fan-out of detection
over chunks does pass values (the chunk plan, each chunk's detections); with a step-per-pod
executor (``k8s_job_executor``, the ECS executor) the steps run on different machines, so the
values go where every step can read them: the blob store, under ``tmp/dagster-steps/{run_id}/``
(encrypted at rest like every object, SSE-KMS on S3). The step that consumes them last removes
its run's objects (:func:`discard_step_outputs`).
"""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg

from resources.blob_store import BlobStore

STEP_IO_MANAGER = "step_io_manager"
STEP_OUTPUTS_PREFIX = "tmp/dagster-steps/"


def step_outputs_prefix(run_id: str) -> str:
    """Where the step outputs of run ``run_id`` are kept."""
    return f"{STEP_OUTPUTS_PREFIX}{run_id}/"


def step_file_key(run_id: str, step: str, name: str) -> str:
    """Where a step of run ``run_id`` keeps a file it hands on instead of a pickled value (one
    chunk's detections: too large to hold); removed with the run's other step outputs."""
    return f"{step_outputs_prefix(run_id)}{step}/{name}"


class BlobStepIOManager(dg.ConfigurableIOManager):
    """Pickles op outputs to the blob store, one object per output (and per mapped chunk).

    Pickle, as Dagster's own S3 pickle IO manager: the objects are written and read only by this
    platform's steps, in a store that already holds the model weights the steps load.
    """

    blob_store: BlobStore

    @staticmethod
    def _key(identifier: list[str] | tuple[str, ...]) -> str:
        run_id, *rest = identifier
        return step_outputs_prefix(run_id) + "/".join(rest) + ".pickle"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Store one output atomically (a reader never sees half of it)."""
        self.blob_store.put_bytes(
            self._key(context.get_identifier()), pickle.dumps(obj, protocol=5)
        )

    def load_input(self, context: dg.InputContext) -> Any:
        """Load the upstream output this input is wired to (one chunk of a fan-in at a time)."""
        return pickle.loads(self.blob_store.get_bytes(self._key(context.get_identifier())))


def discard_step_outputs(blob_store: BlobStore, run_id: str, step_prefix: str = "") -> int:
    """Remove run ``run_id``'s outputs of steps whose key starts with ``step_prefix``.

    Returns:
        How many objects were removed.
    """
    prefix = step_outputs_prefix(run_id)
    keys = [
        i.key
        for i in blob_store.list_prefix(prefix)
        if i.key[len(prefix) :].startswith(step_prefix)
    ]
    for key in keys:
        blob_store.delete(key)
    return len(keys)
