"""``python -IS -m cni_plugin``: run the flannel CNI plugin (the installed script does the same)."""

from .plugin import run

run()
