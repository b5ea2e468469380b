"""Install the plugin as an executable ``flannel`` in a CNI bin directory (e.g. /opt/cni/bin).

Layout written into ``dest``::

    flannel                       tiny script: #!<real python> -IS, adds the lib dir, calls main()
    .flannel-lib-<hash>/          a private, byte-compiled copy of the stdlib-only plugin modules
        cni_plugin/*.py + __pycache__/*.pyc

Why this shape: ``-I`` ignores PYTHON* variables and the user site, ``-S`` skips ``site`` (the
biggest start-up cost), and neither the venv nor site-packages is needed because the plugin code
is copied next to the script. The copy is compiled ahead of time by the same interpreter the
shebang names, so no run needs a writable directory. The shebang is the interpreter's real path
(never a pyenv shim or a venv symlink that may move). Runtimes look plugins up by exact name, so
the hidden directory is never mistaken for a plugin.

``pyflannel install-cni --dest DIR`` calls :func:`install`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["InstallError", "install"]

_LIB_PREFIX = ".flannel-lib-"
_MAX_SHEBANG = 255  # Linux BINPRM_BUF_SIZE (256) minus the newline
# The modules the plugin runs; install.py itself is only needed at install time.
_RUNTIME_MODULES = (
    "__init__.py",
    "__main__.py",
    "delegation.py",
    "netconf.py",
    "plugin.py",
    "protocol.py",
)

_SCRIPT = '''#!{interpreter} -IS
"""flannel CNI plugin (pyflannel {version}); written by cni_plugin.install, do not edit."""
import sys

sys.path.insert(0, {lib!r})
try:
    from cni_plugin.plugin import run
except BaseException as e:  # never a traceback on stdout: runtimes parse it as JSON
    msg = "cannot load the flannel CNI plugin from {lib}: %s; re-run pyflannel install-cni" % e
    msg = msg.replace("\\\\", "/").replace('"', "'").replace("\\n", " ")
    sys.stdout.write('{{\\n    "code": 999,\\n    "msg": "%s"\\n}}' % msg)
    raise SystemExit(1) from None
run(commit={commit!r})
'''


class InstallError(RuntimeError):
    """The plugin could not be installed; the message says why and what to do."""


def _real_interpreter(python: str | None) -> str:
    """Absolute, symlink-free path of the interpreter that ``python`` really runs."""
    candidate = python or getattr(sys, "_base_executable", None) or sys.executable
    if not os.path.isabs(candidate):
        found = shutil.which(candidate)
        if found is None:
            raise InstallError(f"python interpreter {candidate!r} not found on PATH; pass a path")
        candidate = found
    # Ask the interpreter itself: this sees through pyenv shims (shell scripts that exec the
    # real binary) and venv launchers alike.
    probe = "import sys; print(sys.executable); print(sys.version_info >= (3, 9))"
    try:
        done = subprocess.run(
            [candidate, "-IS", "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise InstallError(
            f"cannot run python interpreter {candidate!r} ({e}); pass a working interpreter"
        ) from None
    lines = done.stdout.split()
    if len(lines) != 2 or not lines[0]:
        raise InstallError(f"python interpreter {candidate!r} did not report its path")
    if lines[1] != "True":
        raise InstallError(f"python interpreter {candidate!r} is older than 3.9; use 3.9 or newer")
    real = os.path.realpath(lines[0])
    with open(real, "rb") as f:
        if f.read(2) == b"#!":
            raise InstallError(
                f"{real} is a script, not a python binary (a shim?); pass the real interpreter"
            )
    return real


def _git_commit(source: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyflannel")
    except Exception:
        return "unknown"


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build_lib(dest: Path, interpreter: str, source: Path) -> Path:
    digest = hashlib.sha256(interpreter.encode())
    for name in _RUNTIME_MODULES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    lib = dest / f"{_LIB_PREFIX}{digest.hexdigest()[:12]}"
    if (lib / "cni_plugin" / "plugin.py").is_file():
        return lib
    tmp = dest / f"{lib.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pkg = tmp / "cni_plugin"
        pkg.mkdir(parents=True, mode=0o755)
        for name in _RUNTIME_MODULES:
            shutil.copyfile(source / name, pkg / name)
        # Compile with the interpreter that will run the plugin (its magic number), naming the
        # final directory in the code objects.
        subprocess.run(
            [interpreter, "-IS", "-m", "compileall", "-q", "-d", str(lib), str(tmp)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.rename(lib)
    except (OSError, subprocess.SubprocessError) as e:
        raise InstallError(f"cannot write the plugin library to {lib}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def install(dest: Path, python: str | None = None) -> Path:
    """Write an executable ``flannel`` plugin into ``dest`` and return its path.

    ``python`` is the interpreter to run it with (default: the one running this code, resolved
    to its real binary). Re-installing replaces the script atomically and removes older library
    copies. Raises :class:`InstallError` when the interpreter is unusable or ``dest`` unwritable.
    """
    dest = Path(dest)
    interpreter = _real_interpreter(python)
    shebang = f"#!{interpreter} -IS"
    if len(shebang) > _MAX_SHEBANG or " " in interpreter:
        raise InstallError(
            f"interpreter path {interpreter!r} cannot be used in a shebang (too long or has"
            " spaces); install python under a shorter path or pass another interpreter"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InstallError(f"cannot create CNI bin directory {dest}: {e}") from None
    source = Path(__file__).resolve().parent
    lib = _build_lib(dest, interpreter, source)
    script = _SCRIPT.format(
        interpreter=interpreter,
        version=_package_version(),
        lib=str(lib),
        commit=_git_commit(source),
    )
    target = dest / "flannel"
    try:
        _write_atomically(target, script, 0o755)
    except OSError as e:
        raise InstallError(f"cannot write {target}: {e}") from None
    for old in dest.glob(f"{_LIB_PREFIX}*"):
        if old != lib and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target
