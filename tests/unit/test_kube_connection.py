"""kubeconfig / in-cluster resolution, as client-go's BuildConfigFromFlags."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pyflannel.errors import ConfigError
from pyflannel.subnet.kube.connection import load_kubeconfig, resolve_connection

KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: lab
contexts:
- name: lab
  context: {cluster: c1, user: u1}
clusters:
- name: c1
  cluster:
    server: https://198.51.100.250:6443
    certificate-authority-data: %s
users:
- name: u1
  user:
    client-certificate: certs/client.crt
    client-key-data: %s
"""


def test_kubeconfig_client_cert_and_ca_data(tmp_path: Path) -> None:
    ca, key = b"-----CA-----", b"-----KEY-----"
    path = tmp_path / "kc"
    path.write_text(KUBECONFIG % (base64.b64encode(ca).decode(), base64.b64encode(key).decode()))
    c = load_kubeconfig(str(path))
    assert c.server == "https://198.51.100.250:6443"
    assert c.ca_data == ca and c.client_key_data == key
    assert c.client_cert_file == str(tmp_path / "certs" / "client.crt")  # relative to the file
    assert resolve_connection("https://203.0.113.9", str(path), {}).server == (
        "https://203.0.113.9"
    )


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_text("ca")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    c = resolve_connection("", "", env, sa_dir=str(tmp_path))
    assert c.server == "https://10.96.0.1:443"
    assert c.token_file == str(tmp_path / "token") and c.ca_file == str(tmp_path / "ca.crt")


def test_nothing_given_outside_a_pod_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not running in a pod") as info:
        resolve_connection("", "", {}, sa_dir=str(tmp_path))
    assert "--kubeconfig-file" in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("key: [unclosed", "not valid YAML"),
        ("current-context: x\ncontexts: []\n", "no context named 'x'"),
        (
            "current-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\n"
            "clusters: [{name: c, cluster: {server: 'https://x'}}]\n"
            "users: [{name: u, user: {exec: {command: aws}}}]\n",
            "exec plugin",
        ),
    ],
)
def test_bad_kubeconfig(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "kc"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_kubeconfig(str(path))


def test_daemon_uses_the_kube_manager_with_kube_subnet_mgr(tmp_path: Path) -> None:
    # Before kube mode, --kube-subnet-mgr was accepted and the daemon fell back to etcd.
    from pyflannel.cli.flags import parse_flags
    from pyflannel.daemon import Daemon
    from pyflannel.subnet.kube.manager import KubeSubnetManager

    path = tmp_path / "kc"
    path.write_text(
        "current-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://198.51.100.250:6443', "
        "insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    opts = parse_flags(["--kube-subnet-mgr", f"--kubeconfig-file={path}"], {})
    manager = Daemon(opts)._make_manager()
    assert isinstance(manager, KubeSubnetManager)
    assert manager.client.connection.server == "https://198.51.100.250:6443"
