"""A nightly Airflow DAG that runs ray-inpaint on Kubernetes, one dated output per night.

Two ways, pick one (delete the other task):

- `inpaint_pod`: a KubernetesPodOperator running `rayinpaint run` in the project's image with a local Ray inside
  the pod (one GPU node; the simplest). The pod's exit code is the job's: 0 success, 1 run finished but not a
  success (error or unchanged rate over its bound; rerun resumes), 2 bad settings / manifest / weights or a
  rerun with other settings, 3 output unwritable, 4 manifest store unavailable: rerun later.
- `inpaint_rayjob`: submits examples/kuberay-rayjob.yaml's RayJob for a whole Ray cluster (KubeRay), with the
  date filled in, and waits for it (the cncf.kubernetes provider's KubernetesCreateResourceOperator would do as
  well; a plain kubectl keeps the example short).

Needs apache-airflow and apache-airflow-providers-cncf-kubernetes on the Airflow side only. Rerunning a task
for the same date resumes that date's output; `retries` does that automatically.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

IMAGE = "REPLACE_WITH_REGISTRY/ray-inpaint:0.1.0-ray2.60.0"   # built from examples/Dockerfile
BUCKET = "s3://REPLACE_WITH_BUCKET"

with DAG(
    dag_id="rayinpaint_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,                       # one night at a time, like the CronJob's concurrencyPolicy: Forbid
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
) as dag:
    inpaint_pod = KubernetesPodOperator(
        task_id="inpaint_pod",
        name="rayinpaint-{{ ds_nodash }}",
        image=IMAGE,
        cmds=["rayinpaint"],
        arguments=[
            "run",
            "--manifest", f"{BUCKET}/manifests/{{{{ ds }}}}/",
            "--output", f"{BUCKET}/out/{{{{ ds }}}}/",
            "--weights", f"{BUCKET}/weights/512-inpainting-ema.safetensors",
            "--sampler", "dpmpp_2m", "--steps", "25", "--batch-size", "16",
        ],
        service_account_name="rayinpaint",   # IRSA: S3 credentials without keys (docs/cluster.md)
        container_resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
        get_logs=True,
        on_finish_action="delete_pod",
    )

    inpaint_rayjob = BashOperator(
        task_id="inpaint_rayjob",
        # Rename the RayJob only (the ServiceAccount keeps its name), date the output, wait until the run ends,
        # then fail the task unless the job SUCCEEDED (the driver's exit code decides that).
        bash_command=(
            "sed -e '/^kind: RayJob/,/^  name:/ s/^  name: rayinpaint$/  name: rayinpaint-{{ ds_nodash }}/' "
            "-e 's#/out/$#/out/{{ ds }}/#' examples/kuberay-rayjob.yaml | kubectl apply -f - && "
            "kubectl wait --for=jsonpath='{.status.jobDeploymentStatus}'=Complete "
            "rayjob/rayinpaint-{{ ds_nodash }} --timeout=12h && "
            "test \"$(kubectl get rayjob rayinpaint-{{ ds_nodash }} -o jsonpath='{.status.jobStatus}')\" = SUCCEEDED"
        ),
    )
