"""``pyflannel status|doctor --kube-subnet-mgr``: the kube-mode inspection as a command (flags
as pyflanneld's kube flags); what it shows is :mod:`pyflannel.inspect.kube`'s."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from pyflannel.errors import FlannelError
from pyflannel.inspect.findings import print_report
from pyflannel.inspect.kube import collect
from pyflannel.subnet.kube.annotations import DEFAULT_PREFIX, annotation_keys

__all__ = ["main"]

DEFAULT_NET_CONF = "/etc/kube-flannel/net-conf.json"


def main(prog: str, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """``pyflannel status|doctor --kube-subnet-mgr …``: 0 when healthy, 1 otherwise."""
    import trio

    from pyflannel.subnet.kube.connection import resolve_connection

    env = dict(os.environ if environ is None else environ)
    p = argparse.ArgumentParser(
        prog=f"pyflannel {prog}", description="kube mode: Nodes as flannel sees them"
    )
    p.add_argument("--kube-subnet-mgr", action="store_true")
    p.add_argument("--kube-api-url", default=env.get("FLANNELD_KUBE_API_URL", ""))
    p.add_argument("--kubeconfig-file", default=env.get("FLANNELD_KUBECONFIG_FILE", ""))
    p.add_argument(
        "--kube-annotation-prefix",
        default=env.get("FLANNELD_KUBE_ANNOTATION_PREFIX", DEFAULT_PREFIX),
    )
    p.add_argument(
        "--net-config-path", default=env.get("FLANNELD_NET_CONFIG_PATH", DEFAULT_NET_CONF)
    )
    p.add_argument("--node-name", default=env.get("NODE_NAME", ""), help="this node (NODE_NAME)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = p.parse_args(list(argv))
    try:
        keys = annotation_keys(args.kube_annotation_prefix)
        conn = resolve_connection(args.kube_api_url, args.kubeconfig_file, env)
        try:
            with open(args.net_config_path) as f:
                net_conf: str | None = f.read()
        except OSError:
            net_conf = None
        report = trio.run(collect, conn, args.node_name, keys, net_conf)
    except FlannelError as exc:
        print(f"pyflannel {prog}: {exc}", flush=True)
        return 1
    print_report(report, args.output)
    return 0 if report.healthy else 1
