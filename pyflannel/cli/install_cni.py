"""``pyflannel install-cni --dest DIR``: install the stdlib-only ``flannel`` CNI plugin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Write ``DIR/flannel`` (shebang: the real interpreter with ``-I -S``)."""
    parser = argparse.ArgumentParser(
        prog="pyflannel install-cni", description="install the flannel CNI plugin executable"
    )
    parser.add_argument("--dest", default="/opt/cni/bin", help="CNI bin directory")
    parser.add_argument("--python", default=None, help="interpreter for the plugin's shebang")
    args = parser.parse_args(argv)
    from cni_plugin.install import InstallError, install

    try:
        target = install(Path(args.dest), python=args.python)
    except InstallError as exc:
        print(f"pyflannel install-cni: {exc}", file=sys.stderr)
        return 1
    print(f"installed {target}")
    return 0
