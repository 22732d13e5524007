"""Static checks of the monitoring and autoscaling parts of infra/: Prometheus, Alertmanager and
Grafana in compose, the PodMonitors, the KEDA ScaledObjects and the Dask operator's
autoscaler agree with each other, with the scrape jobs the rules use and with the services
they watch. Needs no Docker or cluster (tests/test_alert_rules.py runs promtool)."""

from __future__ import annotations

import ast
import json
import re
from urllib.parse import urlsplit

import dask.config
import distributed  # noqa: F401 (loads its default configuration into dask.config)
import yaml

from deployments.alert_rules import JOBS
from tests.test_infra import (
    INFRA,
    args,
    compose,
    dask_cluster,
    dask_container,
    env,
    flag,
    k8s,
    pods,
    published,
    runs,
    task_worker_pool,
)

PROMETHEUS = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
DASHBOARD = json.loads((INFRA / "grafana" / "dashboards" / "relay.json").read_text())


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[-1])


def scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}


def targets(job: dict) -> list[tuple[str, int]]:
    """(compose service, port) of every target of a compose scrape job."""
    found = [(name, sd["port"]) for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    for static in job.get("static_configs", []):
        found += [(t.rsplit(":", 1)[0], port_of(t)) for t in static["targets"]]
    return found


def test_compose_prometheus_scrapes_every_relay_process_on_its_port():
    assert set(scrape_jobs()) == set(JOBS), "compose scrape jobs differ from the rules' jobs"
    services = compose()
    api = services["api"]
    assert targets(scrape_jobs()["relay-api"]) == [("api", int(env(api)["RELAY_API_PORT"]))]
    scheduler = services["dask-scheduler"]
    assert targets(scrape_jobs()["dask-scheduler"]) == [
        ("dask-scheduler", port_of(flag(scheduler["command"], "--dashboard-address")))
    ]
    dask_workers = [n for n, s in services.items() if runs(s.get("command"), "dask", "worker")]
    worker_targets = targets(scrape_jobs()["dask-workers"])
    assert {name for name, _ in worker_targets} == set(dask_workers)
    for name, port in worker_targets:
        assert port_of(flag(services[name]["command"], "--dashboard-address")) == port, name
    task_workers = {n for n, s in services.items() if task_worker_pool(s.get("command"))}
    assert {name for name, _ in targets(scrape_jobs()["relay-task-workers"])} == task_workers
    for job in scrape_jobs().values():
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_compose_runs_prometheus_with_the_rules_and_grafana_with_the_dashboard():
    services = compose()
    prometheus = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_flag = next(a for a in args(prometheus["command"]) if a.startswith("--config.file"))
    assert mounts[config_flag.split("=", 1)[1]] == "./prometheus/prometheus.yml"
    for rule_file in PROMETHEUS["rule_files"]:
        assert mounts[rule_file] == "./prometheus/rules.yml", rule_file
    alertmanager = PROMETHEUS["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [t.split(":")[0] for t in alertmanager] == ["alertmanager"]
    assert port_of(alertmanager[0]) in published(services["alertmanager"])
    assert "alerting" in services["alertmanager"]["profiles"], "needs its URLs: a profile"
    grafana = services["grafana"]
    grafana_mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = INFRA / "grafana" / "provisioning"
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "relay.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == grafana_mounts["./grafana/dashboards"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    datasource = source["datasources"][0]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port in published(prometheus)
    uids = {
        target["datasource"]["uid"]
        for panel in DASHBOARD["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {datasource["uid"]}, "dashboard panels use another data source"


def test_alertmanager_secrets_are_filled_in_from_the_environment_only():
    text = (INFRA / "alertmanager" / "alertmanager.yml").read_text()
    placeholders = set(re.findall(r"@(\w+)@", text))
    service = compose()["alertmanager"]
    assert placeholders == set(env(service)), "every placeholder comes from the environment"
    command = " ".join(args(service["command"]))
    assert all(f"@{name}@|$${name}|" in command for name in placeholders), command
    assert "http" not in re.sub(r"#.*", "", text), "no URL may be written in alertmanager.yml"


def test_dashboard_panels_are_unique_and_each_has_a_query():
    panels = DASHBOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len({p["title"] for p in graphs}) == len(graphs), "panel titles repeat"
    assert all(p.get("targets") and all(t["expr"] for t in p["targets"]) for p in graphs)
    text = json.dumps(DASHBOARD)
    for needed in ("http_requests_total", "relay_queue_depth", "relay_api_key_daily_quota"):
        assert needed in text, needed
    assert "relay_worker_last_seen_seconds" in text and "dask_scheduler_workers" in text


def test_pod_monitors_scrape_every_job_on_a_port_the_pods_declare():
    monitors = [doc for (kind, _), doc in k8s().items() if kind == "PodMonitor"]
    jobs = {}
    for monitor in monitors:
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
            jobs[relabel["replacement"]] = (monitor["spec"]["selector"], endpoint["port"])
    assert set(jobs) == set(JOBS), jobs
    labelled = [(d["spec"]["template"]["metadata"]["labels"], p) for p, d in _deployments()]
    spec = dask_cluster()["spec"]
    dask_labels = {"dask.org/cluster-name": dask_cluster()["metadata"]["name"]}
    labelled += [({**dask_labels, "dask.org/component": "scheduler"}, spec["scheduler"]["spec"])]
    labelled += [({**dask_labels, "dask.org/component": "worker"}, spec["worker"]["spec"])]
    for job, (selector, port) in jobs.items():
        chosen = [pod for labels, pod in labelled if _selects(selector, labels)]
        assert chosen, f"the {job} PodMonitor selects no pod"
        for pod in chosen:
            names = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
            assert port in names, f"{job}: a selected pod has no port named {port}"


def _deployments() -> list[tuple[dict, dict]]:
    return [(pods()[name], doc) for (kind, name), doc in k8s().items() if kind == "Deployment"]


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def test_keda_scales_every_task_worker_on_its_pools_queue_depth():
    scaled = {n: doc for (kind, n), doc in k8s().items() if kind == "ScaledObject"}
    workers = {
        name: container
        for name, pod in pods().items()
        for container in pod["containers"]
        if task_worker_pool(container["command"])
    }
    targets_ = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in scaled.values()}
    assert set(targets_) == set(workers), "every task worker Deployment, and only those"
    addresses = set()
    for name, container in workers.items():
        spec = targets_[name]["spec"]
        deployment = k8s()[("Deployment", name)]
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns replicas"
        pool = task_worker_pool(container["command"])
        trigger, *more = spec["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        if spec["minReplicaCount"] == 0:  # a job still running keeps one replica
            (unfinished,) = more
            assert unfinished["metadata"]["query"] == (
                f'clamp_max(max(relay_queued_audio_seconds{{pool="{pool}"}}), 1)'
            ), f"{name}: may scale to zero under a running job"
        else:
            assert more == [], name
        assert re.fullmatch(rf'max\(relay_queue_depth\{{pool="{pool}"\}}\)', meta["query"])
        # One replica per --limit queued units: the worker's own capacity.
        assert int(meta["threshold"]) == int(flag(container["command"], "--limit")), name
        assert meta["ignoreNullValues"] == "false", f"{name}: no data must not read as 0"
        addresses.add(meta["serverAddress"])
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        assert 0 <= low <= high and high >= 1, name
        assert spec["fallback"]["failureThreshold"] >= 1
        assert max(low, 1) <= spec["fallback"]["replicas"] <= high, f"{name}: fallback"
        assert targets_[name]["metadata"]["labels"]["relay.io/pool"] == pool
    assert len(addresses) == 1, f"ScaledObjects ask different Prometheus servers: {addresses}"


def test_dask_workers_scale_with_the_operators_adaptive_autoscaler():
    cluster = dask_cluster()
    autoscalers = [doc for (kind, _), doc in k8s().items() if kind == "DaskAutoscaler"]
    assert [a["spec"]["cluster"] for a in autoscalers] == [cluster["metadata"]["name"]]
    bounds = autoscalers[0]["spec"]
    assert 1 <= bounds["minimum"] <= bounds["maximum"], "keep one warm worker"
    assert bounds["minimum"] <= cluster["spec"]["worker"]["replicas"] <= bounds["maximum"]
    worker = dask_container("workers")
    # The operator retires the worker the scheduler picks by this name.
    assert flag(worker["args"], "--name") == "$(DASK_WORKER_NAME)"
    assert flag(worker["args"], "--nthreads") == "1"
    for part, container in (("scheduler", dask_container("scheduler")), ("workers", worker)):
        port = port_of(flag(container["args"], "--dashboard-address"))
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert declared["http-dashboard"] == port, f"dask {part}: /metrics port not declared"
    scheduler_env = {e["name"]: e.get("value") for e in dask_container("scheduler")["env"]}
    routes = ast.literal_eval(scheduler_env["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"])
    defaults = dask.config.get("distributed.scheduler.http.routes")
    assert set(defaults) <= set(routes), "the scheduler lost a default route (/metrics...)"
    assert "distributed.http.scheduler.api" in routes, "the operator retires through the API"
    assert not (INFRA / "k8s" / "dask-values.yaml").exists(), "one way to run Dask on k8s"


def test_every_task_worker_serves_the_metrics_port_prometheus_scrapes():
    """compose and Kubernetes task workers set RELAY_METRICS_WORKER_PORT to the port the
    scrape config and the PodMonitor expect, bound to all interfaces (another host scrapes)."""
    from relay_settings import RelaySettings

    assert "RELAY_METRICS_WORKER_PORT" in RelaySettings.environment_names()
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    task_services = [
        service
        for service in compose["services"].values()
        if service.get("command", [])[:4] == ["python", "-m", "cli", "worker"]
    ]
    assert len(task_services) == 4
    for service in task_services:
        assert service["environment"]["RELAY_METRICS_WORKER_PORT"] == "9100"
        assert service["environment"]["RELAY_METRICS_WORKER_HOST"] == "0.0.0.0"
    documents = list(yaml.safe_load_all((INFRA / "k8s" / "workers.yaml").read_text()))
    containers = [
        container
        for doc in documents
        if doc and doc.get("kind") == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container.get("command", [])[:4] == ["python", "-m", "cli", "worker"]
    ]
    assert len(containers) == 4
    for container in containers:
        env = {item["name"]: item.get("value") for item in container["env"]}
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        assert env["RELAY_METRICS_WORKER_PORT"] == str(port) == "9100"
        assert env["RELAY_METRICS_WORKER_HOST"] == "0.0.0.0"


def test_every_prefect_process_worker_is_checked_through_its_health_endpoint():
    """compose and Kubernetes start each pool's Prefect worker with --with-healthcheck and
    check its /health (port 8080): a worker that stopped polling is restarted."""
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    workers = [
        service
        for service in compose["services"].values()
        if service.get("command", [])[:3] == ["prefect", "worker", "start"]
    ]
    assert len(workers) == 5
    for service in workers:
        assert "--with-healthcheck" in service["command"]
        assert "127.0.0.1:8080/health" in " ".join(service["healthcheck"]["test"])
    documents = list(yaml.safe_load_all((INFRA / "k8s" / "workers.yaml").read_text()))
    containers = [
        container
        for doc in documents
        if doc and doc.get("kind") == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container.get("command", [])[:3] == ["prefect", "worker", "start"]
    ]
    assert len(containers) == 5
    for container in containers:
        assert "--with-healthcheck" in container["command"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
