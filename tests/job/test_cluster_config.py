"""Static checks of the deployment files: cluster.yaml (Ray cluster launcher, AWS), the KubeRay examples
and examples/Dockerfile.

Everything here runs offline on CPU: cluster.yaml is validated against the JSON schema shipped inside the
installed ray package and by the launcher's own (cloud-free) preparation and validation functions; no
cloud API is called.
"""

from __future__ import annotations

import copy
import datetime
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "examples" / "kuberay-rayjob.yaml"
CRON_YAML = ROOT / "examples" / "kuberay-cron.yaml"
DOCKERFILE = ROOT / "examples" / "Dockerfile"

GPU_FAMILY = re.compile(r"^(g\d|p\d)", re.IGNORECASE)  # EC2 GPU instance families (g4dn, g5, g6e, p4d, p5, ...)
SECRET_PATTERNS = [
    re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"aws_secret_access_key", re.IGNORECASE),
    re.compile(r"aws_access_key_id", re.IGNORECASE),
    re.compile(r"aws_session_token", re.IGNORECASE),
    re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),  # shape of a secret access key
]


# ---- helpers ----------------------------------------------------------------------------------------


def _ray_pin() -> str:
    """The exact Ray version pinned in pyproject.toml (`ray[...]==X`)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.match(r"^\s*ray(?:\[[^\]]*\])?\s*==\s*([0-9][^\s;,]*)", d))]
    assert len(pins) == 1, f"expected exactly one pinned ray dependency in pyproject.toml, got {deps}"
    return pins[0]


def test_cluster_extra_brings_the_job_server_at_the_pinned_version():
    """`pip install ".[cluster]"` is what README and docs/cluster.md say makes `ray job submit` work."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["cluster"]
    rays = [m for d in extra if (m := re.match(r"^\s*ray\[([^\]]*)\]\s*==\s*(\S+)", d))]
    assert len(rays) == 1 and "default" in rays[0].group(1).split(",") and rays[0].group(2) == _ray_pin()
    for doc in ("README.md", "docs/cluster.md"):
        assert 'pip install ".[cluster]"' in (ROOT / doc).read_text(), doc


def _strings(obj):
    """Every string (keys and values) anywhere in a loaded YAML document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _assert_no_secrets(text: str, where: str) -> None:
    for pat in SECRET_PATTERNS:
        m = pat.search(text)
        assert m is None, f"{where} looks like it contains AWS credentials: {m.group(0)!r}"


@pytest.fixture(scope="module")
def pin() -> str:
    return _ray_pin()


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    ray = pytest.importorskip("ray")
    try:
        res = importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json")
        text = res.read_text()
    except (FileNotFoundError, ModuleNotFoundError, AttributeError):
        text = (Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text()
    return json.loads(text)


# ---- cluster.yaml -----------------------------------------------------------------------------------


def test_cluster_yaml_matches_ray_schema(cluster, ray_schema):
    jsonschema.validate(cluster, ray_schema)


def test_cluster_yaml_passes_ray_launcher_validation(cluster):
    """The checks `ray up` applies before it contacts the cloud: fill in provider defaults, merge the
    setup commands, check docker settings and per-type worker bounds, then validate (schema plus
    head_node_type / min_workers consistency)."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(copy.deepcopy(cluster))
    prepared = util.prepare_config(copy.deepcopy(cluster))
    util.validate_config(prepared)
    # prepare_config keeps our node types, and the head keeps no worker slots.
    assert set(prepared["available_node_types"]) == set(cluster["available_node_types"])
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_provider_is_aws_with_region_and_no_stopped_node_reuse(cluster):
    provider = cluster["provider"]
    assert provider["type"] == "aws"
    assert isinstance(provider.get("region"), str) and provider["region"]
    # `ray down` must terminate workers, not leave stopped instances with billed volumes behind.
    assert provider.get("cache_stopped_nodes") is False


def test_head_declares_no_gpu_and_no_cpu_for_work(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    resources = head["resources"]
    assert resources.get("CPU") == 0, "head must advertise CPU 0 so no Ray Data work is scheduled on it"
    assert resources.get("GPU", 0) == 0
    assert not GPU_FAMILY.match(head["node_config"]["InstanceType"]), "head should be a CPU instance"


def test_gpu_worker_types_declare_gpus(cluster):
    head_type = cluster["head_node_type"]
    workers = {k: v for k, v in cluster["available_node_types"].items() if k != head_type}
    assert workers, "no worker node types"
    for name, nt in workers.items():
        assert nt["resources"].get("GPU", 0) >= 1, f"{name} declares no GPU"
        assert nt["resources"].get("CPU", 0) >= 1, f"{name} declares no CPU for decode/encode tasks"
        assert GPU_FAMILY.match(nt["node_config"]["InstanceType"]), f"{name} is not a GPU instance type"
        assert nt.get("min_workers", 0) == 0, f"{name} should scale from zero"
    enabled = [k for k, v in workers.items() if v.get("max_workers", 0) > 0]
    assert enabled, "at least one GPU worker type must be able to launch"
    for k in enabled:
        assert workers[k]["max_workers"] <= cluster["max_workers"], f"{k} exceeds the global max_workers"


def test_idle_timeout_and_autoscaling_bounds(cluster):
    assert 1 <= cluster["idle_timeout_minutes"] <= 60
    assert cluster["max_workers"] >= 1


def test_object_store_access_through_instance_profiles(cluster):
    for name, nt in cluster["available_node_types"].items():
        arn = nt["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert re.match(r"^arn:aws:iam::[^:]+:instance-profile/.+", arn), f"{name} has no instance profile"


def test_ray_version_in_setup_equals_pyproject_pin(cluster, pin):
    commands = []
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        commands += cluster.get(key) or []
    found = re.findall(r"\bray(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.+-]*)", " ".join(commands))
    assert found, "setup commands do not pin a Ray version"
    assert set(found) == {pin}, f"setup pins ray {sorted(set(found))}, pyproject pins {pin}"


def test_setup_installs_the_project_from_the_mounted_wheel(cluster):
    mounts = cluster.get("file_mounts") or {}
    assert mounts, "no file_mounts: the project wheel is not shipped to the nodes"
    remote = next(iter(mounts))
    remote_home = remote.replace("~", "$HOME", 1)
    setup = " ".join(cluster["setup_commands"]).replace('"$HOME"', "$HOME")
    assert "ray_inpaint-" in setup and (remote in setup or remote_home in setup), (
        "setup commands must install the ray_inpaint wheel from the mounted directory"
    )


def test_dashboard_not_exposed(cluster):
    for s in _strings(cluster):
        assert "0.0.0.0" not in s, f"found an all-interfaces address in {s!r}"
        assert "::/0" not in s
    start = " ".join(cluster["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert all(h in ("127.0.0.1", "localhost", "::1") for h in hosts), hosts
    assert "--head" in start and "--autoscaling-config" in start


def test_no_aws_keys_in_cluster_yaml(cluster):
    _assert_no_secrets(CLUSTER_YAML.read_text(), "cluster.yaml")
    for s in _strings(cluster):
        assert "secret" not in s.lower(), f"cluster.yaml value mentions a secret: {s!r}"


def test_docker_off_or_image_given(cluster):
    docker = cluster.get("docker") or {}
    assert docker == {} or docker.get("image") or docker.get("head_image")


# ---- KubeRay ----------------------------------------------------------------------------------------


def _check_rayjob(rj: dict, pin: str, sa_names: set[str]) -> None:
    assert rj["apiVersion"] == "ray.io/v1"
    assert rj["kind"] == "RayJob"
    spec = rj["spec"]
    entry = " ".join(spec["entrypoint"].split())
    assert entry.startswith("rayinpaint run "), entry
    assert "--manifest " in entry and "--output " in entry
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0

    rc = spec["rayClusterSpec"]
    assert str(rc["rayVersion"]) == pin

    head = rc["headGroupSpec"]
    assert str(head["rayStartParams"].get("num-cpus")) == "0", "head must not run Ray Data work"
    head_pod = head["template"]["spec"]
    assert head_pod.get("serviceAccountName") in sa_names
    for c in head_pod["containers"]:
        limits = (c.get("resources") or {}).get("limits") or {}
        assert "nvidia.com/gpu" not in limits, "head must not take a GPU"

    groups = rc["workerGroupSpecs"]
    assert groups
    images = [c["image"] for c in head_pod["containers"]]
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
        pod = g["template"]["spec"]
        assert pod.get("serviceAccountName") in sa_names
        for c in pod["containers"]:
            limits = c["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, f"{g['groupName']} has no GPU limit"
            images.append(c["image"])
    for image in images:
        tag = image.rsplit(":", 1)[-1]
        assert f"ray{pin}" in tag or tag.startswith(pin), f"image tag {image!r} does not carry Ray {pin}"

    text = json.dumps(rj)
    assert "LoadBalancer" not in text and "NodePort" not in text, "dashboard must not be exposed"


def _irsa_accounts(docs: list[dict]) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d.get("kind") == "ServiceAccount"
        and "eks.amazonaws.com/role-arn" in (d["metadata"].get("annotations") or {})
    }


def test_kuberay_rayjob(pin):
    docs = _load_all(RAYJOB_YAML)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "RayJob"}
    accounts = _irsa_accounts(docs)
    assert accounts, "no ServiceAccount with an IRSA role annotation"
    _check_rayjob(_one(docs, "RayJob"), pin, set(accounts))
    _assert_no_secrets(RAYJOB_YAML.read_text(), RAYJOB_YAML.name)


def _cron_template(docs: list[dict]) -> str:
    cm = _one(docs, "ConfigMap")
    (text,) = cm["data"].values()
    return text


def test_kuberay_cron_schedule_and_policy():
    docs = _load_all(CRON_YAML)
    cron = _one(docs, "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    minute, hour, dom, month, dow = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*"), "not nightly"


def test_kuberay_cron_rbac():
    docs = _load_all(CRON_YAML)
    kinds = {d["kind"]: d for d in docs}
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"):
        assert kind in kinds, f"missing {kind}"
    role, binding = kinds["Role"], kinds["RoleBinding"]
    assert role["apiVersion"] == binding["apiVersion"] == "rbac.authorization.k8s.io/v1"
    rules = [r for r in role["rules"] if "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"]]
    assert rules and "create" in rules[0]["verbs"] and "get" in rules[0]["verbs"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    assert any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in binding["subjects"])
    assert sa in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    # The template is mounted into the pod that creates the RayJob.
    cm_name = _one(docs, "ConfigMap")["metadata"]["name"]
    assert any((v.get("configMap") or {}).get("name") == cm_name for v in pod["volumes"])


def test_kuberay_cron_rayjob_template_is_dated(pin):
    docs = _load_all(CRON_YAML)
    template = _cron_template(docs)
    assert "__DATE__" in template
    day = datetime.date(2025, 1, 31).isoformat()
    rj = yaml.safe_load(template.replace("__DATE__", day))
    assert day in rj["metadata"]["name"]
    entry = " ".join(rj["spec"]["entrypoint"].split())
    output = re.search(r"--output\s+(\S+)", entry).group(1)
    assert day in output, f"output path {output!r} is not dated"
    _check_rayjob(rj, pin, set(_irsa_accounts(docs)))
    _assert_no_secrets(CRON_YAML.read_text(), CRON_YAML.name)


def test_kuberay_cron_script_and_shared_service_account():
    docs = _load_all(CRON_YAML)
    pod = _one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = "\n".join(a for c in pod["containers"] for a in (c.get("args") or []))
    assert "__DATE__" in script and "kubectl create" in script
    sh = shutil.which("sh")
    if sh:
        res = subprocess.run([sh, "-n", "-c", script], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    # The IRSA ServiceAccount is repeated so either file applies on its own; the copies must agree.
    assert _irsa_accounts(docs) == _irsa_accounts(_load_all(RAYJOB_YAML))


def test_dockerfile_builds_on_the_pinned_ray_image(pin):
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms and froms[0].startswith(f"rayproject/ray:{pin}-"), froms
    assert re.search(r"pip install[^\n]*/tmp/ray-inpaint", text)
    _assert_no_secrets(text, "Dockerfile")


def test_ray_token_authentication_is_on_everywhere(cluster):
    """Every node starts Ray with RAY_AUTH_MODE=token and gets the token at Ray's default path; drivers started
    in a login shell (ray exec, ssh) inherit the mode; the KubeRay examples turn it on through authOptions."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts and all(re.search(r"(^|[;\s])export RAY_AUTH_MODE=token;", c) for c in starts), cluster[key]
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = " ".join(cluster["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup and 'chmod 600 "$HOME/.ray/auth_token"' in setup
    for path in (RAYJOB_YAML, CRON_YAML):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for cm in [d for d in docs if d.get("kind") == "ConfigMap"]:  # the cron job's RayJob template
            for text in cm.get("data", {}).values():
                docs += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)] if "RayJob" in text else []
        specs = [d["spec"]["rayClusterSpec"] for d in docs if d.get("kind") == "RayJob"]
        assert specs, path
        assert all(s.get("authOptions") == {"mode": "token"} for s in specs), path
    text = (ROOT / "docs" / "cluster.md").read_text()
    assert "RAY_AUTH_MODE=token" in text and "get-auth-token --generate" in text
