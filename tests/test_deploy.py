"""contrib/deploy: the kustomize base and overlays are valid Kubernetes objects.

Every object is checked against the official OpenAPI schemas of a current Kubernetes
release (kubernetes-validate, strict: unknown fields are errors). The overlays only
add RFC 6902 JSON patches to the base, so their result is built here with a JSON-patch
library (``jsonpatch``) on any machine; where ``kubectl`` is installed, ``kubectl
kustomize`` renders each overlay too and must give the same objects.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from host.cli import main

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "contrib" / "deploy"
BASE = DEPLOY / "base"
KUBERNETES_VERSION = "1.35.0"
OVERLAY_PLUGIN_DIRS = {
    "k3s": "/var/lib/kubelet/device-plugins",
    "k0s": "/var/lib/k0s/kubelet/device-plugins",
    "microk8s": "/var/snap/microk8s/common/var/lib/kubelet/device-plugins",
}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}
"""What the base and the overlays may use: resources plus JSON6902 patches, no more."""


def load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    (document,) = load_yaml(directory / "kustomization.yaml")
    assert set(document) <= KUSTOMIZE_FIELDS, f"{directory}: fields beyond {KUSTOMIZE_FIELDS}"
    assert document["kind"] == "Kustomization"
    return dict(document)


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects of ``directory``'s kustomization: its resources, patched, namespaced."""
    spec = kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += build(path) if path.is_dir() else load_yaml(path)
    for patch in spec.get("patches", []):
        target = patch["target"]
        operations = load_yaml(directory / patch["path"])[0]
        matches = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
        ]
        assert len(matches) == 1, f"patch {patch['path']} matches {len(matches)} objects"
        objects[matches[0]] = jsonpatch.apply_patch(objects[matches[0]], operations)
    if "namespace" in spec:
        objects = copy.deepcopy(objects)
        for obj in objects:
            obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == "DaemonSet"]
    return found


def validate_all(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


class TestBase:
    def test_every_object_is_valid(self) -> None:
        """The base's ConfigMap and DaemonSet pass the Kubernetes schemas (strict)."""
        objects = build(BASE)
        assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "DaemonSet"]
        validate_all(objects)

    def test_schema_validation_catches_mistakes(self) -> None:
        """The check is real: a misspelt field fails it."""
        broken = copy.deepcopy(daemonset(build(BASE)))
        broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)

    def test_pod_is_hardened_and_wired(self) -> None:
        """Probes on the metrics port, downward API, read-only host trees, no capability."""
        pod = daemonset(build(BASE))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["priorityClassName"] == "system-node-critical"
        env = {item["name"]: item for item in container["env"]}
        assert env["DEVPLUGIN_METRICS_ADDRESS"]["value"] == "0.0.0.0:9464"
        assert env["DEVPLUGIN_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        security = container["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for name, host_path in [("sysfs", "/sys"), ("devfs", "/dev")]:
            assert volumes[name]["hostPath"]["path"] == host_path
            assert mounts[name]["readOnly"] is True
        assert env["DEVPLUGIN_SYSFS_ROOT"]["value"] == mounts["sysfs"]["mountPath"]
        assert env["DEVPLUGIN_DEVFS_ROOT"]["value"] == mounts["devfs"]["mountPath"]
        assert volumes["cdi"]["hostPath"]["path"] == mounts["cdi"]["mountPath"] == "/var/run/cdi"

    def test_every_devplugin_variable_is_one_run_reads(self) -> None:
        """No misspelt DEVPLUGIN_* variable: each is an option of `run` (or its --set)."""
        container = daemonset(build(BASE))["spec"]["template"]["spec"]["containers"][0]
        run = main.get_command(click.Context(main), "run")
        assert run is not None
        known = {p.envvar for p in run.params if isinstance(p, click.Option)} | {"DEVPLUGIN_SET"}
        # The pod's identity, for the host to tell its own sockets from an older instance's.
        known.add("DEVPLUGIN_INSTANCE_ID")
        names = {item["name"] for item in container["env"] if item["name"].startswith("DEVPLUGIN_")}
        assert names <= known
        assert container["args"] == ["run"]

    def test_resources_cover_the_measured_footprint(self) -> None:
        """The memory limit holds the measured 140 MiB of a host serving 100,000 devices."""
        container = daemonset(build(BASE))["spec"]["template"]["spec"]["containers"][0]
        limit = container["resources"]["limits"]["memory"]
        assert limit.endswith("Mi")
        assert int(limit[:-2]) >= 140

    def test_config_map_is_a_config_the_host_accepts(self, tmp_path: Path) -> None:
        """The ConfigMap's TOML passes `devplugin-host scan --config` (on a bare machine)."""
        (config_map,) = [obj for obj in build(BASE) if obj["kind"] == "ConfigMap"]
        config = tmp_path / "config.toml"
        config.write_text(config_map["data"]["config.toml"], encoding="utf-8")
        (tmp_path / "sys").mkdir()
        (tmp_path / "dev").mkdir()
        result = CliRunner().invoke(
            main,
            ["scan", "--config", str(config), "--sysfs-root", str(tmp_path / "sys"),
             "--devfs-root", str(tmp_path / "dev")],
            env={"DEVPLUGIN_ENABLE": None, "DEVPLUGIN_SET": None},
        )  # fmt: skip
        assert result.exit_code == 0, result.output


class TestOverlays:
    @pytest.mark.parametrize("overlay", sorted(OVERLAY_PLUGIN_DIRS))
    def test_patched_result_is_valid(self, overlay: str) -> None:
        """Base + the overlay's patches: valid objects, the distribution's plugin directory."""
        objects = build(DEPLOY / "overlays" / overlay)
        validate_all(objects)
        volumes = daemonset(objects)["spec"]["template"]["spec"]["volumes"]
        paths = {volume["name"]: volume.get("hostPath", {}).get("path") for volume in volumes}
        assert paths["device-plugins"] == OVERLAY_PLUGIN_DIRS[overlay]
        kubelet_root = OVERLAY_PLUGIN_DIRS[overlay].removesuffix("/device-plugins")
        assert paths["pod-resources"] == f"{kubelet_root}/pod-resources"

    def test_every_overlay_is_tested(self) -> None:
        """No overlay directory escapes the checks above."""
        found = {path.name for path in (DEPLOY / "overlays").iterdir() if path.is_dir()}
        assert found == set(OVERLAY_PLUGIN_DIRS)

    @pytest.mark.parametrize("overlay", sorted(OVERLAY_PLUGIN_DIRS))
    def test_kubectl_kustomize_renders_the_same(self, overlay: str) -> None:
        """Where kubectl is installed, `kubectl kustomize` gives exactly these objects."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl is not installed; the overlays were built with jsonpatch above")
        rendered = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        documents = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]
        key = lambda obj: (obj["kind"], obj["metadata"]["name"])  # noqa: E731
        assert sorted(documents, key=key) == sorted(build(DEPLOY / "overlays" / overlay), key=key)


class TestDra:
    def test_objects_are_valid_and_wired(self) -> None:
        """The DRA kustomization: valid objects; the DaemonSet runs as the bound account."""
        objects = build(DEPLOY / "dra")
        validate_all(objects)
        # The DeviceClasses: tests/test_deploy_deviceclasses.py
        kinds = sorted(obj["kind"] for obj in objects if obj["kind"] != "DeviceClass")
        assert kinds == sorted(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "ServiceAccount",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ]
        )
        pod = daemonset(objects)["spec"]["template"]["spec"]
        (account,) = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is True
        (binding,) = [obj for obj in objects if obj["kind"] == "ClusterRoleBinding"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "devplugin-host", "namespace": "kube-system"}
        ]
        env = {item["name"]: item for item in pod["containers"][0]["env"]}
        assert env["DEVPLUGIN_DRA"]["value"] == "gpu"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    def test_kubelet_dirs_are_mounted_at_their_node_paths(self) -> None:
        """kubelet dials the sockets at the reported paths: mount path == node path."""
        pod = daemonset(build(DEPLOY / "dra"))["spec"]["template"]["spec"]
        hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        for name in ("kubelet-plugins", "kubelet-plugins-registry"):
            assert mounts[name] == hosts[name]
        assert hosts["kubelet-plugins"] == "/var/lib/kubelet/plugins"
        assert hosts["kubelet-plugins-registry"] == "/var/lib/kubelet/plugins_registry"

    def test_rbac_allows_what_the_driver_does_and_no_more(self) -> None:
        """Slices: read and write; claims and nodes: get only."""
        (role,) = [obj for obj in build(DEPLOY / "dra") if obj["kind"] == "ClusterRole"]
        rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
        assert rules == {
            ("resource.k8s.io", "resourceslices"): {
                "get", "list", "watch", "create", "update", "delete"
            },
            ("resource.k8s.io", "resourceclaims"): {"get"},
            ("", "nodes"): {"get"},
        }  # fmt: skip
