"""The deployment files (deploy/): every Kustomize overlay renders with
`kubectl kustomize` and is valid against the Kubernetes API's schemas
(kubernetes-validate ships them: no download), and holds what sbx needs
(a privileged node with the host's mounts and the shared snapshot volume,
two api replicas reading the database URL from a Secret, no secret in
plain text, one image); the systemd units pass `systemd-analyze verify`
and keep their sandboxes across a restart; every command line names
options that sbx's CLI has."""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from sbx.cli.main import cli
from sbx.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ["evaluation", "external-db"]
UNITS = DEPLOY / "systemd"
# The oldest Kubernetes still commonly run, and the newest schemas shipped.
K8S_VERSIONS = ["1.28", kubernetes_validate.utils.latest_version()]

Doc = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/install.sh installs it (Debian 13)"
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(workload: Doc, name: str) -> Doc:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"]
                if c["name"] == name)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def parses(argv: list[str]) -> None:
    """argv (after `sbx`) is a command line sbx's CLI accepts (parsed, not run)."""
    cli.commands[argv[0]].make_context(argv[0], argv[1:])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_is_valid(overlay: str) -> None:
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "DaemonSet",
                                         "ConfigMap", "PersistentVolumeClaim"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "sbx"
        for version in K8S_VERSIONS:
            try:
                # strict: an unknown or misspelt field is an error too.
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError as exc:
                pytest.fail(exc.message)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_node_is_privileged_on_the_host_with_the_shared_snapshots(overlay: str) -> None:
    docs = render(overlay)
    ds = one(docs, "DaemonSet", "sbx-node")
    pod = ds["spec"]["template"]["spec"]
    node = container(ds, "node")
    assert node["securityContext"]["privileged"] is True
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    # Upgraded by hand, node by node (drain first), never by a rollout.
    assert ds["spec"]["updateStrategy"]["type"] == "OnDelete"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in node["volumeMounts"]}
    for path in ("/var/lib/sbx", "/var/run/netns", "/run/sbx", "/sys/fs/cgroup", "/dev"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    # The mounts the agent makes must be the host's (and outlive the pod).
    for path in ("/var/lib/sbx", "/var/run/netns"):
        assert mounts[path]["mountPropagation"] == "Bidirectional"
    claim = volumes[mounts["/var/lib/sbx-snapshots"]["name"]]["persistentVolumeClaim"]
    pvc = one(docs, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    script = node["args"][0]
    assert "--snapshot-dir /var/lib/sbx-snapshots" in script
    assert "--data-dir /var/lib/sbx " in script
    env = {e["name"]: e for e in node["env"]}
    assert env["SBX_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "sbx-join-token", "key": "token"}
    # Privileged pods need a namespace Pod Security Admission lets them into.
    ns = one(docs, "Namespace", "sbx")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_node_command_line_is_sbx_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DaemonSet's script ends in an `sbx node` line whose options exist."""
    script = container(one(render("external-db"), "DaemonSet", "sbx-node"), "node")["args"][0]
    line = script[script.index("exec sbx node"):].replace("\\\n", " ")
    # Shell substitutions become plain words; the token comes from the Secret.
    argv = shlex.split(re.sub(r"\$\([^)]*\)|\$\w+", "X", line))[2:]
    monkeypatch.setenv("SBX_JOIN_TOKEN", "X")
    parses(argv)
    assert "--join-token" not in argv  # from the Secret, through SBX_JOIN_TOKEN


def test_node_subnets_are_distinct_networks() -> None:
    subnets = one(render("external-db"), "ConfigMap", "sbx-node-subnets")["data"]
    nets = [ipaddress.IPv4Network(v) for v in subnets.values()]
    assert len(nets) >= 3
    for i, a in enumerate(nets):
        assert a.prefixlen <= 28  # what sbx's subnet setting accepts
        assert not any(a.overlaps(b) for b in nets[i + 1:]), a


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_has_two_replicas_and_its_database_from_a_secret(overlay: str) -> None:
    docs = render(overlay)
    deploy = one(docs, "Deployment", "sbx-api")
    assert deploy["spec"]["replicas"] == 2
    api = container(deploy, "api")
    parses(api["args"])
    assert api["args"][0] == "api"
    env = {e["name"]: e for e in api["env"]}
    ref = env["SBX_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "url"
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    if overlay == "evaluation":
        # The generated Secret (its name carries a hash) is the one referred to.
        assert set(secrets) == {ref["name"]} and ref["name"].startswith("sbx-database-")
        pg = container(one(docs, "StatefulSet", "sbx-postgres"), "postgres")
        pg_env = {e["name"]: e for e in pg["env"]}
        assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == ref["name"]
        one(docs, "Service", "sbx-postgres")
    else:
        # The operator's own Secret: nothing of it in the files.
        assert secrets == {} and ref["name"] == "sbx-database"
    # Both sides name the same templates path (recorded by one, built by the other).
    node = container(one(docs, "DaemonSet", "sbx-node"), "node")
    node_env = {e["name"]: e for e in node["env"]}
    assert env["SBX_TEMPLATES_PATH"]["value"] == node_env["SBX_TEMPLATES_PATH"]["value"]
    # No root for the control plane.
    pod_sc = deploy["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert api["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_ports(overlay: str) -> None:
    docs = render(overlay)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"].items()
        targets = [w for w in workloads
                   if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort", port["name"]) in ports


SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|DATABASE_URL|_KEY$")
# A URL with a password, a join token, an API key.
# (PASSWORD in capitals is a placeholder in a comment.)
SECRET_VALUE = re.compile(r"://[^/\s:@]+:(?!PASSWORD@)[^/\s@]+@|sbxjoin_\w|\bsbx_[A-Za-z0-9]{8}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_in_plain_text(overlay: str) -> None:
    for doc in render(overlay):
        if doc["kind"] == "Secret":
            continue  # evaluation's generated one, checked above
        for s in strings(doc):
            assert not SECRET_VALUE.search(s), f"{doc['kind']}/{doc['metadata']['name']}: {s}"
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), e["name"]


def test_no_secret_in_the_files() -> None:
    """The evaluation overlay's password is the one secret value written in
    deploy/ (and says so); the systemd env files are empty templates."""
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        found = SECRET_VALUE.findall(path.read_text())
        if path == KUSTOMIZE / "overlays/evaluation/kustomization.yaml":
            assert found == ["://sbx:sbx-evaluation-only@"]
        else:
            assert found == [], path
    for name in ("node.env.example", "api.env.example"):
        for line in (UNITS / name).read_text().splitlines():
            key, _, value = line.partition("=")
            if SECRET_NAME.search(key) and not line.startswith("#"):
                assert value == "", line


def test_one_image_for_both_roles() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        sbx = {container(one(docs, "Deployment", "sbx-api"), "api")["image"],
               container(one(docs, "DaemonSet", "sbx-node"), "node")["image"]}
        assert len(sbx) == 1
        images = [c["image"] for d in docs if "template" in d.get("spec", {})
                  for c in d["spec"]["template"]["spec"]["containers"]]
        for image in images:
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", image
    # The api's user is the image's.
    uid = re.search(r"useradd .*--uid (\d+)", (DEPLOY / "container/Containerfile").read_text())
    assert uid is not None
    api_pod = one(render("evaluation"), "Deployment", "sbx-api")["spec"]["template"]["spec"]
    assert api_pod["securityContext"]["runAsUser"] == int(uid.group(1))


def test_containerfile_takes_runsc_from_debian_13_by_its_own_apt_source() -> None:
    text = (DEPLOY / "container/Containerfile").read_text()
    assert re.search(r"^FROM debian:12", text, re.M)
    assert "/etc/apt/sources.list.d/debian.sources" in text
    assert "Pin-Priority: 100" in text
    assert re.search(r"apt-get install [^;]*-t trixie runsc", text)
    for src in re.findall(r"^COPY (.+) /src/", text, re.M):
        for name in src.split():
            assert (DEPLOY.parent / name).exists(), name


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections and their keys in order (repeated keys kept,
    continuation lines joined)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    text = re.sub(r"\\\n\s*", " ", (UNITS / name).read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def value(sections: dict[str, list[tuple[str, str]]], key: str) -> str | None:
    found = [v for k, v in sections["Service"] if k == key]
    return found[-1] if found else None


SBX_UNITS = {"sbx-server.service": "server", "sbx-api.service": "api",
             "sbx-node.service": "node"}
# Not for the units that run a node (root): options that give the service a
# mount namespace of its own (its netns, disk and overlay mounts would not be
# the host's), and another user.
NOT_FOR_ROOT = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "TemporaryFileSystem",
                "BindPaths", "PrivateMounts", "DynamicUser", "User"}


def test_units_pass_systemd_analyze_verify() -> None:
    """On copies whose ExecStart names this checkout's sbx (verify wants an
    executable there); any warning (an unknown key, say) fails."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/install.sh installs it"
    sbx = Path(sys.prefix) / "bin" / "sbx"
    assert sbx.is_file()
    with tempfile.TemporaryDirectory(prefix="sbx-units-") as tmp:
        for name in SBX_UNITS:
            text = (UNITS / name).read_text()
            assert "/opt/sbx/.venv/bin/sbx " in text
            (Path(tmp) / name).write_text(text.replace("/opt/sbx/.venv/bin/sbx ", f"{sbx} "))
        out = subprocess.run([analyze, "verify", *SBX_UNITS], cwd=tmp, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stderr


@pytest.mark.parametrize("name", sorted(SBX_UNITS))
def test_unit_runs_its_sbx_command(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBX_JOIN_TOKEN", "X")  # the node's, from its EnvironmentFile
    sections = unit(name)
    assert value(sections, "Restart") == "on-failure"
    exec_start = value(sections, "ExecStart")
    assert exec_start is not None
    argv = shlex.split(re.sub(r"\$\{\w+\}", "X", exec_start))
    assert argv[0] == "/opt/sbx/.venv/bin/sbx" and argv[1] == SBX_UNITS[name]
    parses(argv[1:])
    keys = {k for k, _ in sections["Service"]}
    if SBX_UNITS[name] == "api":
        # Unprivileged and confined.
        assert value(sections, "DynamicUser") == "yes"
        assert value(sections, "NoNewPrivileges") == "yes"
        assert value(sections, "CapabilityBoundingSet") == ""
        assert value(sections, "ProtectSystem") == "strict"
        assert value(sections, "EnvironmentFile") == "/etc/sbx/api.env"
    else:
        # Root, host mounts, and the sandboxes outlive a restart of sbx.
        assert value(sections, "KillMode") == "process"
        assert not keys & NOT_FOR_ROOT, keys & NOT_FOR_ROOT
    if SBX_UNITS[name] == "node":
        assert value(sections, "EnvironmentFile") == "/etc/sbx/node.env"
        assert "--snapshot-dir" in argv
        mounts = [v for k, v in sections["Unit"] if k == "RequiresMountsFor"]
        assert mounts == [argv[argv.index("--snapshot-dir") + 1]]


def test_node_env_example_sets_what_the_unit_reads() -> None:
    env = dict(line.partition("=")[::2] for line in
               (UNITS / "node.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    exec_start = value(unit("sbx-node.service"), "ExecStart") or ""
    assert set(re.findall(r"\$\{(\w+)\}", exec_start)) <= set(env)
    assert {"SBX_JOIN_TOKEN", "SBX_SUBNET"} <= set(env)
    # Each is read by sbx node (an option's variable or an SBX_* setting) or by ExecStart.
    envvars = {p.envvar for p in cli.commands["node"].params if isinstance(p, click.Option)}
    for key in env:
        assert (key in envvars or key.removeprefix("SBX_").lower() in Settings.model_fields
                or f"${{{key}}}" in exec_start), key
