"""The Dask cluster in compose and Kubernetes agrees with the code: one scheduler address,
the model preloaded, chunks queued in priority order, and Relay's Dask configuration (no
malloc trim) in every Dask process. Helpers are tests/test_infra.py's."""

from __future__ import annotations

import ast
from urllib.parse import urlsplit

import yaml

from relay_settings import PROJECT_ROOT
from tests.test_infra import (
    INFRA,
    PRELOAD,
    args,
    compose,
    config,
    dask_cluster,
    dask_container,
    dask_pods,
    env,
    env_k8s,
    flag,
    pods,
    runs,
)


def test_dask_address_points_at_the_scheduler():
    addresses = {env(s).get("RELAY_DASK_ADDRESS") for s in compose().values()} - {None, ""}
    assert len(addresses) == 1, f"compose services disagree on RELAY_DASK_ADDRESS: {addresses}"
    address = addresses.pop()
    url = urlsplit(address)
    scheduler = compose().get(url.hostname, {})
    assert runs(scheduler.get("command"), "dask", "scheduler"), f"no scheduler {url.hostname}"
    port = int(flag(scheduler["command"], "--port"))
    assert (url.scheme, url.port) == ("tcp", port), f"{address}: scheduler is on tcp, :{port}"
    for name, service in compose().items():
        if runs(service.get("command"), "dask", "worker"):
            assert address in args(service["command"]), f"{name} joins another scheduler"
    # The operator names the scheduler's Service <cluster>-scheduler.
    cluster = dask_cluster()
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    service = f"tcp://{cluster['metadata']['name']}-scheduler:{ports['tcp-comm']}"
    assert config("RELAY_DASK_ADDRESS") == service, "k8s address is not the operator's scheduler"
    assert int(flag(dask_container("scheduler")["args"], "--port")) == ports["tcp-comm"]


def test_dask_workers_preload_the_model():
    workers = [s["command"] for s in compose().values() if runs(s.get("command"), "dask", "worker")]
    assert workers and all(flag(c, "--preload") == PRELOAD for c in workers), workers
    assert flag(dask_container("workers")["args"], "--preload") == PRELOAD, "k8s preload"
    module = PROJECT_ROOT / (PRELOAD.replace(".", "/") + ".py")
    assert module.is_file(), f"{module} is missing"
    hooks = [n for n in ast.parse(module.read_text()).body if isinstance(n, ast.FunctionDef)]
    assert any(n.name == "dask_setup" and len(n.args.args) == 1 for n in hooks), "no dask_setup"


def test_shared_dask_schedulers_queue_chunks_in_priority_order():
    from flows.runtime import SCHEDULER_SATURATION

    key = "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"
    assert float(env(compose()["dask-scheduler"])[key]) == SCHEDULER_SATURATION
    assert float(env_k8s(dask_pods()["dask scheduler"])[key]) == SCHEDULER_SATURATION
    from deployments.stack import stack_env

    assert float(stack_env()[key]) == SCHEDULER_SATURATION


def test_every_dask_process_loads_relays_dask_config_without_malloc_trim():
    """One file removes MALLOC_TRIM_THRESHOLD_ and asks glibc for huge pages; the image
    points every Dask process at it."""
    from flows.runtime import DASK_CONFIG_FILE

    spawn_env = yaml.safe_load(DASK_CONFIG_FILE.read_text())["distributed"]["nanny"]
    assert spawn_env["pre-spawn-environ"] == {
        "MALLOC_TRIM_THRESHOLD_": None,
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    }
    in_image = "/app/" + DASK_CONFIG_FILE.relative_to(PROJECT_ROOT).as_posix()
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM ") :]
    envs = [ln for ln in runtime.splitlines() if ln.strip().upper().startswith("ENV ")]
    assert any(f"DASK_CONFIG={in_image}" in ln.split() for ln in envs), "image lacks DASK_CONFIG"
    # Every Dask process (and every Relay process: their LocalClusters) runs the relay image
    # and keeps the image's DASK_CONFIG.
    dask_services = [s for s in compose().values() if runs(s.get("command"), "dask")]
    assert len(dask_services) >= 2, "compose: no Dask scheduler and workers"
    for name, service in compose().items():
        if str(service.get("image")).startswith("relay:"):
            assert env(service).get("DASK_CONFIG", in_image) == in_image, name
    assert all(str(s.get("image")).startswith("relay:") for s in dask_services)
    for name, pod in [*pods().items(), *dask_pods().items()]:
        assert all(c["image"].startswith("relay:") for c in pod["containers"]), name
        assert env_k8s(pod).get("DASK_CONFIG", in_image) == in_image, name
