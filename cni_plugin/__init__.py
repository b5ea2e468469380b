"""The ``flannel`` CNI plugin: standard library only, built to start fast under ``python -IS``.

Nothing is imported here on purpose: the plugin's start-up time is dominated by the interpreter
and by imports, so every module is imported only where it is needed. See :mod:`cni_plugin.plugin`
for the entry point and :mod:`cni_plugin.install` for the installer.
"""
