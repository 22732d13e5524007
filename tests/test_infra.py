"""Static checks of infra/: the Dockerfile, docker compose file and Kubernetes manifests agree
with the settings, the work pools, prefect.yaml and each other. Needs no Docker or cluster."""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections import Counter
from functools import cache
from urllib.parse import urlsplit

import yaml

from relay_pools import Workload, load_pools, pools_serving
from relay_settings import BUNDLED_MODEL, PROJECT_ROOT, RelaySettings

INFRA = PROJECT_ROOT / "infra"
POOLS = set(load_pools())
SETTINGS = RelaySettings.environment_names()
# RELAY_* variables that are not settings fields, with the file that reads each directly.
READ_DIRECTLY = {
    "RELAY_DISCORD_WEBHOOK_URL": "deployments/bootstrap.py",
    "RELAY_DISCORD_ADMIN_WEBHOOK_URL": "deployments/bootstrap.py",
    "RELAY_DISCORD_ALERTS_WEBHOOK_URL": "deployments/bootstrap.py",
    **{
        f"RELAY_{provider}_KEY_{which}": "deployments/keys.yaml"
        for provider, which in [
            ("OPENAI", "PRIMARY"),
            ("OPENAI", "SECONDARY"),
            ("STABILITY", "PRIMARY"),
            ("MINIMAX", "PRIMARY"),
        ]
    },
}
BOT_POOLS = set(pools_serving(Workload.BOT))
PRELOAD = "deployments.dask_preload"
LIVE, READY = "/api/health/live", "/api/health/ready"


@cache
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]


@cache
def k8s() -> dict:
    paths = sorted((INFRA / "k8s").glob("*.yaml"))
    docs = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def dask_cluster() -> dict:
    """The DaskCluster the Dask operator runs (infra/k8s/dask-cluster.yaml)."""
    clusters = [doc for (kind, _), doc in k8s().items() if kind == "DaskCluster"]
    assert len(clusters) == 1, "infra/k8s needs exactly one DaskCluster"
    return clusters[0]


def dask_pods() -> dict[str, dict]:
    """The DaskCluster's scheduler and worker pod specs."""
    spec = dask_cluster()["spec"]
    return {"dask scheduler": spec["scheduler"]["spec"], "dask workers": spec["worker"]["spec"]}


def dask_container(part: str) -> dict:
    return dask_pods()[f"dask {part}"]["containers"][0]


def args(command) -> list[str]:
    """A command (compose string or list, k8s list) as words."""
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command or []]


def flag(command, name: str) -> str | None:
    words = args(command)
    for i, word in enumerate(words[:-1]):
        if word == name:
            return words[i + 1]
    return None


def runs(command, *words: str) -> bool:
    return args(command)[: len(words)] == list(words)


def worker_pool(command) -> str | None:
    return flag(command, "--pool") if runs(command, "prefect", "worker", "start") else None


def env(service: dict) -> dict[str, str]:
    """A compose service's environment, `${VAR:-default}` read as its default."""
    raw = service.get("environment") or {}
    pairs = raw.items() if isinstance(raw, dict) else (e.split("=", 1) for e in raw)
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in pairs}


def published(service: dict) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}


def pods(kind: str = "Deployment") -> dict[str, dict]:
    return {name: doc["spec"]["template"]["spec"] for (k, name), doc in k8s().items() if k == kind}


def env_k8s(pod: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}


def config(key: str) -> str:
    return k8s()[("ConfigMap", "relay-config")]["data"][key]


def test_files_parse():
    assert compose(), "infra/docker-compose.yml has no services"
    kinds = {kind for kind, _ in k8s()}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service"} <= kinds, kinds
    assert dask_cluster()["spec"]["worker"]["replicas"] >= 1


def test_dockerfile_is_multistage_non_root_healthy_and_bakes_the_model():
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()[:1] not in {"", "#"}]
    froms = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2, "infra/Dockerfile must be multi-stage (a builder and a runtime)"
    final = lines[froms[-1] :]
    users = [ln.split()[1].split(":")[0] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the runtime stage must not run as root"
    checks = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
    assert checks and "NONE" not in checks[-1].upper(), "the runtime stage needs a HEALTHCHECK"
    bakes = re.compile(rf"resolve_model\(['\"]{re.escape(BUNDLED_MODEL)}['\"]\)")
    assert any(ln.startswith("RUN ") and bakes.search(ln) for ln in lines), "model not baked"
    asr = ast.parse((PROJECT_ROOT / "tasks" / "asr.py").read_text())
    assert "resolve_model" in {n.name for n in asr.body if isinstance(n, ast.FunctionDef)}
    copied = " ".join(ln for ln in lines if ln.startswith("COPY ") and "--from" not in ln)
    packages = {p.parent.name for p in PROJECT_ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    modules = {p.name for p in PROJECT_ROOT.glob("*.py")}  # relay_settings.py, bot_config.py...
    needed = packages | modules | {"work-pools", "bot.yaml", "prefect.yaml", "uv.lock"}
    missing = {n for n in needed if not re.search(rf"(^|\s){re.escape(n)}/?(\s|$)", copied)}
    assert not missing, f"infra/Dockerfile does not copy {sorted(missing)}"


def test_compose_relay_services_build_from_the_dockerfile():
    for name, service in compose().items():
        words = args(service.get("command"))
        relay_code = words[:1] in (["prefect"], ["python"], ["dask"], ["sh"])
        if not (relay_code or "build" in service or "relay" in str(service.get("image"))):
            continue
        build = service.get("build") or {}
        assert build.get("dockerfile") == "infra/Dockerfile", f"{name} is not built from it"
        assert (INFRA / build["context"]).resolve() == PROJECT_ROOT, f"{name}: wrong context"
        assert str(service.get("image")).startswith("relay:"), f"{name}: not a relay image"


def test_every_relay_variable_is_a_setting():
    names = {k for service in compose().values() for k in env(service)}
    names |= set(re.findall(r"\$\{(RELAY_\w+)", (INFRA / "docker-compose.yml").read_text()))
    names |= set(k8s()[("ConfigMap", "relay-config")]["data"])
    names |= set(k8s()[("Secret", "relay-secrets")]["stringData"])
    names |= {k for pod in [*pods().values(), *pods("Job").values()] for k in env_k8s(pod)}
    names |= {k for pod in dask_pods().values() for k in env_k8s(pod)}
    relay = {n for n in names if n.startswith("RELAY_")}
    assert {"RELAY_DATABASE_URL", "RELAY_DATA_DIR", "RELAY_DASK_ADDRESS"} <= relay
    for name, reader in READ_DIRECTLY.items():
        assert name in (PROJECT_ROOT / reader).read_text(), f"{reader} no longer reads {name}"
    unknown = sorted(relay - SETTINGS - set(READ_DIRECTLY))
    assert not unknown, f"not fields of RelaySettings (typo?): {unknown}"


def test_one_worker_per_pool_and_only_known_pools():
    in_compose = {n: p for n, s in compose().items() if (p := worker_pool(s.get("command")))}
    containers = [(n, c) for n, pod in pods().items() for c in pod["containers"]]
    in_k8s = {n: p for n, c in containers if (p := worker_pool(c.get("command")))}
    for name, pool in in_k8s.items():
        assert pods()[name].get("nodeSelector", {}).get("relay.io/pool") == pool, name
    for where, found in (("compose", in_compose), ("k8s", in_k8s)):
        assert not set(found.values()) - POOLS, f"{where} workers use pools not in pools.yaml"
        assert Counter(found.values()) == Counter(POOLS), f"{where}: one worker per pool: {found}"
        assert all(name == f"worker-{pool}" for name, pool in found.items()), found
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    used = {d["name"]: d["work_pool"]["name"] for d in deployments}
    assert used and not set(used.values()) - POOLS, f"prefect.yaml pools not in pools.yaml: {used}"


def test_api_port_is_the_same_everywhere():
    api = compose()["api"]
    port = int(env(api)["RELAY_API_PORT"])
    assert args(api["command"]) == ["python", "-m", "cli", "api"]
    assert port in published(api), f"compose api does not publish RELAY_API_PORT {port}"
    assert f":{port}{READY}" in " ".join(args(api["healthcheck"]["test"]))
    pod = pods()["relay-api"]
    assert int(env_k8s(pod)["RELAY_API_PORT"]) == port, "k8s api sets another RELAY_API_PORT"
    container = pod["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["readinessProbe"]["httpGet"] == {"path": READY, "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": LIVE, "port": port}
    targets = [p["targetPort"] for p in k8s()[("Service", "relay-api")]["spec"]["ports"]]
    assert targets == [port], f"k8s Service targetPort {targets} != RELAY_API_PORT {port}"


def test_api_probes_are_the_apis_open_health_endpoints_with_time_for_their_checks():
    """Liveness checks the process only (a dependency's outage never restarts the API);
    readiness checks the dependencies, each bounded by RELAY_HEALTH_TIMEOUT_SECONDS, so a
    probe must wait longer than that before it gives up."""
    from api.app import create_app

    paths = create_app(RelaySettings(), {}).openapi()["paths"]
    for path in (LIVE, READY):
        assert "security" not in paths[path]["get"], f"{path} must answer probes without a token"
    assert "503" in paths[READY]["get"]["responses"]
    check_timeout = RelaySettings().health.timeout_seconds
    probe = pods()["relay-api"]["containers"][0]["readinessProbe"]
    # The checks, then the listening workers: each bounded by the timeout, one after the other.
    assert probe.get("timeoutSeconds", 1) > 2 * check_timeout, "readiness gives up too soon"
    assert "RELAY_HEALTH_TIMEOUT_SECONDS" not in k8s()[("ConfigMap", "relay-config")]["data"]
    compose_check = compose()["api"]["healthcheck"]
    assert "timeout=5" in " ".join(args(compose_check["test"])) and 2 * check_timeout < 5
    assert int(str(compose_check["timeout"]).rstrip("s")) >= 5


def test_prefect_api_url_points_at_the_server():
    urls = {env(s)["PREFECT_API_URL"] for s in compose().values() if "PREFECT_API_URL" in env(s)}
    assert len(urls) == 1, f"compose services disagree on PREFECT_API_URL: {urls}"
    url = urlsplit(urls.pop())
    server = compose().get(url.hostname, {})
    assert runs(server.get("command"), "prefect", "server", "start"), f"no server {url.hostname}"
    assert int(flag(server["command"], "--port")) == url.port, "the server listens elsewhere"
    assert url.port in published(server), f"{url.hostname} does not publish {url.port}"
    assert url.path == urlsplit(config("PREFECT_API_URL")).path == "/api", "must end in /api"


def test_gpu_worker_gets_a_gpu():
    template = json.loads((PROJECT_ROOT / "work-pools" / "asr-gpu.json").read_text())
    pool_env = template["variables"]["properties"]["env"]["default"]
    service = compose()["worker-asr-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "gpu" in service.get("profiles", []), "the GPU worker belongs in the gpu profile"
    pod = pods()["worker-asr-gpu"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits.get("nvidia.com/gpu", 0)) >= 1, "k8s asr-gpu must request nvidia.com/gpu"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "toleration"
    for where, values in (("compose", env(service)), ("k8s", env_k8s(pod))):
        for key in ("RELAY_ASR_DEVICE", "RELAY_ASR_COMPUTE_TYPE"):
            assert values[key] == pool_env[key], f"{where} {key} differs from asr-gpu.json"
        # The shared Dask workers are CPU-only: GPU chunks must not be sent there.
        assert values.get("RELAY_DASK_ADDRESS") == "", f"{where} GPU worker uses the CPU cluster"


def test_job_folders_are_shared():
    for name, service in compose().items():
        command = service.get("command")
        if name == "api" or runs(command, "prefect", "worker") or runs(command, "dask", "worker"):
            mounts = {tuple(str(v).split(":")[:2]) for v in service.get("volumes", [])}
            assert ("relay-data", env(service)["RELAY_DATA_DIR"]) in mounts, f"{name}: no /data"
    claim = k8s()[("PersistentVolumeClaim", "relay-data")]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "relay-data must be ReadWriteMany"
    for name, pod in [*pods().items(), ("dask workers", dask_pods()["dask workers"])]:
        claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod["volumes"]}
        pod_mounts = [m for c in pod.get("containers", [pod]) for m in c["volumeMounts"]]
        assert any(
            claims.get(m["name"], {}).get("claimName") == "relay-data"
            and m["mountPath"] == config("RELAY_DATA_DIR")
            for m in pod_mounts
        ), f"{name} does not mount the relay-data claim at RELAY_DATA_DIR"


def task_worker_pool(command) -> str | None:
    return flag(command, "--pool") if runs(command, "python", "-m", "cli", "worker") else None


def bot_task_pool(command) -> str | None:
    pool = task_worker_pool(command)
    return pool if pool in BOT_POOLS else None


def test_every_bot_pool_has_task_workers_that_share_the_api_secret_and_storage():
    in_compose = {n: p for n, s in compose().items() if (p := bot_task_pool(s.get("command")))}
    assert set(in_compose.values()) == BOT_POOLS, in_compose
    api_env = env(compose()["api"])
    for name in in_compose:
        service_env = env(compose()[name])
        for shared in ("RELAY_SECRET_KEY", "PREFECT_LOCAL_STORAGE_PATH", "RELAY_DATABASE_URL"):
            assert service_env.get(shared) == api_env.get(shared), f"{name}: {shared} differs"
        assert service_env["PREFECT_LOCAL_STORAGE_PATH"].startswith(service_env["RELAY_DATA_DIR"])
    assert config("PREFECT_LOCAL_STORAGE_PATH").startswith(config("RELAY_DATA_DIR"))
    assert "RELAY_SECRET_KEY" in k8s()[("Secret", "relay-secrets")]["stringData"]
    in_k8s = {
        n: p
        for n, pod in pods().items()
        for c in pod["containers"]
        if (p := bot_task_pool(c["command"]))
    }
    assert set(in_k8s.values()) == BOT_POOLS, in_k8s
    for name, pool in in_k8s.items():
        assert pods()[name]["nodeSelector"]["relay.io/pool"] == pool
        assert "RELAY_SECRET_KEY" in env_k8s(pods()[name])


def asr_task_pool(command) -> str | None:
    pool = task_worker_pool(command)
    return pool if pool in pools_serving(Workload.TRANSCRIPTION) else None


def test_every_asr_pool_has_a_task_worker_that_the_api_submits_to():
    asr_pools = set(pools_serving(Workload.TRANSCRIPTION))
    in_compose = {n: p for n, s in compose().items() if (p := asr_task_pool(s.get("command")))}
    assert set(in_compose.values()) == asr_pools, in_compose
    assert env(compose()["api"])["RELAY_TRANSCRIBE_VIA"] == "task-worker"
    assert config("RELAY_TRANSCRIBE_VIA") == "task-worker"
    api_env = env(compose()["api"])
    for name in in_compose:
        service_env = env(compose()[name])
        for shared in ("PREFECT_LOCAL_STORAGE_PATH", "RELAY_DATABASE_URL", "RELAY_DATA_DIR"):
            assert service_env.get(shared) == api_env.get(shared), f"{name}: {shared} differs"
        assert ("relay-data", service_env["RELAY_DATA_DIR"]) in {
            tuple(str(v).split(":")[:2]) for v in compose()[name].get("volumes", [])
        }, f"{name}: no /data"
    in_k8s = {
        n: p
        for n, pod in pods().items()
        for c in pod["containers"]
        if (p := asr_task_pool(c["command"]))
    }
    assert set(in_k8s.values()) == asr_pools, in_k8s
    for name, pool in in_k8s.items():
        assert pods()[name]["nodeSelector"]["relay.io/pool"] == pool
    # The GPU pool's task worker runs its chunks on its own GPU, never on the CPU cluster.
    template = json.loads((PROJECT_ROOT / "work-pools" / "asr-gpu.json").read_text())
    pool_env = template["variables"]["properties"]["env"]["default"]
    gpu = {"compose": compose()["asr-tasks-gpu"], "k8s": pods()["asr-tasks-gpu"]}
    for where, values in (("compose", env(gpu["compose"])), ("k8s", env_k8s(gpu["k8s"]))):
        assert values.get("RELAY_DASK_ADDRESS") == "", (
            f"{where} GPU task worker uses the CPU cluster"
        )
        for key in ("RELAY_ASR_DEVICE", "RELAY_ASR_COMPUTE_TYPE"):
            assert values[key] == pool_env[key], f"{where} {key} differs from asr-gpu.json"
    assert "gpu" in gpu["compose"].get("profiles", [])
    assert int(gpu["k8s"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_no_deployment_runs_an_old_and_a_new_release_side_by_side():
    """A migration may drop columns the previous release writes (docs/deploy.md)."""
    deployments = {name: doc for (kind, name), doc in k8s().items() if kind == "Deployment"}
    assert deployments
    for name, doc in deployments.items():
        assert doc["spec"].get("strategy", {}).get("type") == "Recreate", name


def _seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration compose writes: {duration!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def test_every_task_worker_may_stop_within_its_grace_period():
    """A task worker exits within RELAY_WORKERS_STOP_SECONDS of SIGTERM (flows/stopping.py):
    its container must not be killed before (compose waits 10 s, Kubernetes 30 s)."""
    default = RelaySettings().workers.stop_seconds
    in_compose = [n for n, s in compose().items() if task_worker_pool(s.get("command"))]
    assert in_compose
    for name in in_compose:
        bound = float(env(compose()[name]).get("RELAY_WORKERS_STOP_SECONDS", default))
        grace = _seconds(compose()[name].get("stop_grace_period", "10s"))
        assert bound < grace, f"{name}: stops within {bound} s, killed after {grace} s"
    in_k8s = [
        n
        for n, pod in pods().items()
        if any(task_worker_pool(c["command"]) for c in pod["containers"])
    ]
    assert in_k8s
    for name in in_k8s:
        bound = float(env_k8s(pods()[name]).get("RELAY_WORKERS_STOP_SECONDS") or default)
        assert bound < pods()[name].get("terminationGracePeriodSeconds", 30), name
