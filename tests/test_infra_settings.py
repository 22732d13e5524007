"""Compose and Kubernetes give each Relay service the same settings: the multi-host tests
(tests/hosts/) run each service with compose's, so Kubernetes must deploy the same."""

from __future__ import annotations

from tests.test_infra import INFRA, compose, env, env_k8s, k8s, pods


def _image_env() -> set[str]:
    """Names the image itself sets (``ENV`` in infra/Dockerfile): every container has them."""
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("ENV ")]
    return {word.split("=", 1)[0] for line in lines for word in line.split()[1:] if "=" in word}


def _k8s_env_names(pod: dict) -> set[str]:
    """Every variable a pod's containers get: their env and the ConfigMaps and Secrets they
    take whole (envFrom)."""
    names = set(env_k8s(pod))
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source:
                    doc = k8s()[(kind, source[key]["name"])]
                    names |= set(doc.get("data") or {}) | set(doc.get("stringData") or {})
    return names


# Read only by the API; the ConfigMap gives it to every pod (compose to the api service).
API_ONLY = {"RELAY_TRANSCRIBE_VIA"}


def test_compose_and_kubernetes_give_each_relay_service_the_same_settings():
    """The multi-host tests (tests/hosts/) run each service with compose's settings:
    Kubernetes must give its pod the same variables, and no others."""
    k8s_pods = {**pods(), **pods("Job")}
    checked = 0
    for name, service in compose().items():
        if "relay" not in str(service.get("image", "")) or "dask" in name:
            continue  # Dask's pods: the DaskCluster (checked above); Prefect's: its chart
        if name == "prefect-server":
            continue
        pod = k8s_pods[{"api": "relay-api", "bootstrap": "relay-bootstrap"}.get(name, name)]
        ours = ("RELAY_", "PREFECT_")
        given = {k for k in env(service) if k.startswith(ours)} | _image_env()
        deployed = {k for k in _k8s_env_names(pod) if k.startswith(ours)} | _image_env()
        assert given - API_ONLY == deployed - API_ONLY, (name, given ^ deployed)
        checked += 1
    assert checked >= 10
