"""pyflannel: a wire-compatible Python reimplementation of flannel's flanneld and CNI plugin."""

__all__ = ["__version__"]

__version__ = "0.1.0"
