"""Hardware placement: op tags that put GPU steps on GPU nodes under either run launcher.

The same tags serve both production launchers: ``dagster-k8s/config`` asks Kubernetes for a GPU
and tolerates the GPU node pool's taint; ``ecs/*`` tags ask the ECS executor for a task on the
GPU capacity provider. Locally they are ignored, and ``pool="gpu"`` serialises GPU steps (the
local instance's ``pools.default_limit``).
"""

GPU_POOL = "gpu"

GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "limits": {"nvidia.com/gpu": "1", "memory": "16Gi"},
                "requests": {"cpu": "4", "memory": "8Gi"},
            }
        },
        "pod_spec_config": {
            "node_selector": {"surg/accelerator": "nvidia-gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    },
    "ecs/cpu": "4096",
    "ecs/memory": "16384",
    "ecs/run_task_kwargs": {
        # The run's default (Fargate) task definition cannot run on GPU instances.
        "taskDefinition": "surg-gpu-step",
        "capacityProviderStrategy": [{"capacityProvider": "surg-gpu", "weight": 1}],
    },
    "surg/accelerator": "gpu",
}
