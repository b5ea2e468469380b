"""The CNI wire protocol: error codes, spec versions, ``CNI_*`` variables, JSON in and out.

One module rather than four because every import costs the plugin start-up time (about 0.15 ms
each, measured; the whole plugin has ~2 ms to spend beyond the interpreter's own start-up).

Speed notes, all measured with ``python -IS`` (see bench/cni_bench.py):

* ``import json`` costs ~10 ms (it pulls in :mod:`re`); the C accelerator ``_json`` that
  :mod:`json` itself uses costs ~0.4 ms, so the happy path talks to it directly and :mod:`json`
  is imported only to word an error message for input that does not parse.
* No ``from __future__ import annotations`` (another 0.3 ms): annotations that name
  typing-only types are quoted instead.
* The container-ID pattern is checked with string methods, not :mod:`re`.

Output follows Go's ``encoding/json`` where it matters for byte-level comparisons with flannel:
compact, map keys sorted, non-ASCII left as UTF-8, ``<``, ``>``, ``&``, U+2028/U+2029 escaped.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = [
    "COMMANDS",
    "CURRENT_VERSION",
    "ERR_DECODE",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_INTERNAL",
    "ERR_INVALID_ENV",
    "ERR_INVALID_NETWORK_CONFIG",
    "ERR_IO",
    "ERR_NOT_AVAILABLE",
    "ERR_TRY_AGAIN_LATER",
    "ERR_UNKNOWN_CONTAINER",
    "ERR_UNSUPPORTED_FIELD",
    "SUPPORTED_VERSIONS",
    "CmdArgs",
    "CniError",
    "check_config_version",
    "dumps",
    "error_document",
    "json_kind",
    "loads",
    "quote",
    "read_cmd_args",
    "valid_container_id",
    "validate_ifname",
    "version_at_least",
    "version_document",
]

# ----------------------------------------------------------------------------------------------
# Errors

# Codes from the CNI spec (SPEC.md "Error") and the Go library (999 = any untyped error).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_NETWORK_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_INTERNAL = 999


class CniError(Exception):
    """A failure reported to the runtime as ``{"code", "msg", "details"}`` on stdout.

    The plugin may not import :mod:`pyflannel.errors` (third-party dependencies, start-up
    time), hence its own type. ``raw`` holds the exact stdout of a delegate that failed, so its
    error reaches the runtime byte for byte instead of being re-encoded.
    """

    def __init__(self, code: int, msg: str, details: str = "", *, raw: "bytes | None" = None):
        super().__init__(msg if not details else f"{msg}; {details}")
        self.code = code
        self.msg = msg
        self.details = details
        self.raw = raw


# ----------------------------------------------------------------------------------------------
# JSON

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]

_WS = " \t\n\r"


def _reject_constant(name: str) -> "Any":
    # Python accepts NaN/Infinity; Go (and the JSON grammar) do not.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads; ``json.JSONDecoder``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


# typeshed types the context as another scanner; any object with these attributes works.
_scan = _json.make_scanner(_ScannerContext()) if _json is not None else None  # type: ignore[arg-type]


def _slow_loads(text: str) -> "Any":
    """Parse with :mod:`json` for its error message; also the fallback without ``_json``."""
    import json

    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("exceeded max depth") from None


def loads(data: "bytes | str") -> "Any":
    """Parse one JSON document; ``ValueError`` with a readable message if it is not one.

    Invalid UTF-8 becomes U+FFFD, as in Go's decoder.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WS))
    if start == len(text):
        raise ValueError("unexpected end of JSON input")  # Go's wording
    if _scan is not None:
        try:
            value, end = _scan(text, start)
        except (StopIteration, SystemError, ValueError, RecursionError):
            # _json builds its error object only if json.decoder is already imported (else it
            # raises SystemError); let the json module say what is wrong.
            pass
        else:
            if not text[end:].strip(_WS):
                return value
    return _slow_loads(text)


def _go_string(s: str) -> str:
    out: str = _encode_basestring(s)
    if "<" in out or ">" in out or "&" in out:
        out = out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    if not out.isascii():
        out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if any("\ud800" <= c <= "\udfff" for c in out):
            # Lone surrogates (from surrogateescape'd env values) cannot be written as UTF-8.
            out = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in out)
    return out


def _not_serializable(value: object) -> "Any":
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if _json is not None:
    _encode_basestring: "Callable[[str], str]" = _json.encode_basestring
    _encode: "Callable[[Any, int], Any]" = _json.make_encoder(
        None, _not_serializable, _go_string, None, ":", ",", True, False, False
    )
else:  # pragma: no cover - CPython always has _json
    import json as _json_module

    _encode_basestring = _json_module.encoder.py_encode_basestring

    def _encode(obj: "Any", _level: int) -> "Any":
        return [_json_module.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)]


def quote(s: str) -> str:
    """``s`` as a JSON string literal, escaped like Go's encoder."""
    return _go_string(s)


def dumps(obj: "Any") -> str:
    """Compact JSON with keys sorted at every level, like Go's ``json.Marshal`` of a map."""
    return "".join(_encode(obj, 0))


def error_document(code: int, msg: str, details: str = "") -> str:
    """The CNI error object as the Go skel prints it (4-space indent, no trailing newline)."""
    body = f'{{\n    "code": {code},\n    "msg": {_go_string(msg)}'
    if details:
        body += f',\n    "details": {_go_string(details)}'
    return body + "\n}"


def json_kind(value: object) -> str:
    """The JSON type name of a decoded value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ----------------------------------------------------------------------------------------------
# Spec versions

# Same list as flannel built with github.com/containernetworking/cni v1.3.0 (`version.All`).
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"


def _numeric_version(version: str) -> "tuple[int, int, int] | None":
    parts = version.split(".")
    if len(parts) != 3 or not all(p and p.isascii() and p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def _looks_like_plugin_release(version: "tuple[int, int, int]") -> bool:
    # containernetworking/plugins and flannel-io/cni-plugin released 0.5.x-0.9.x, 1.0.1,
    # 1.1.1, 1.2.0 … — numbers people paste into "cniVersion" by mistake (the old seed
    # conflist said "0.8.5"). Spec versions never had those shapes.
    major, minor, patch = version
    if major == 0:
        return 5 <= minor <= 9
    return major == 1 and (minor >= 2 or patch >= 1)


def check_config_version(value: object) -> str:
    """Validate a config's ``cniVersion`` and return it ("" means 0.1.0, as in the Go library).

    ``CniError`` code 1 for anything not in :data:`SUPPORTED_VERSIONS`; the message names the
    valid versions and explains the common mistake of writing a plugin release number.
    """
    if value is None or value == "":
        return ""
    valid = ", ".join(SUPPORTED_VERSIONS)
    listing = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    if not isinstance(value, str):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f'incompatible CNI versions: "cniVersion" must be a string, one of {valid}',
            f"config has a {json_kind(value)}, plugin supports [{listing}]",
        )
    if value in SUPPORTED_VERSIONS:
        return value
    numeric = _numeric_version(value)
    if numeric is not None and _looks_like_plugin_release(numeric):
        why = (
            f'cniVersion "{value}" looks like a CNI plugins release number, not a CNI spec'
            f' version; use one of {valid} ("1.0.0" for containernetworking-plugins 1.1.x)'
        )
    else:
        why = (
            f'cniVersion "{value}" is not a CNI spec version this plugin knows; use one of {valid}'
        )
    raise CniError(
        ERR_INCOMPATIBLE_VERSION,
        f"incompatible CNI versions: {why}",
        f'config is "{value}", plugin supports [{listing}]',
    )


def version_at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` for versions accepted by :func:`check_config_version`."""
    have = _numeric_version(version or "0.1.0")
    want = _numeric_version(minimum)
    return have is not None and want is not None and have >= want


def version_document() -> str:
    """The VERSION answer, byte for byte as flannel (cni library v1.3.0) prints it."""
    listing = ",".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion":"{CURRENT_VERSION}","supportedVersions":[{listing}]}}\n'


# ----------------------------------------------------------------------------------------------
# CNI_* environment variables (checks of the Go skel, cni v1.3.0)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ID_REST = _ALNUM + "_.-"
_MAX_IFNAME = 15

# variable -> commands that require it (CNI_COMMAND itself is always required).
_REQUIRED = (
    ("CNI_COMMAND", ("ADD", "CHECK", "DEL", "GC", "STATUS")),
    ("CNI_CONTAINERID", ("ADD", "CHECK", "DEL")),
    ("CNI_NETNS", ("ADD", "CHECK")),
    ("CNI_IFNAME", ("ADD", "CHECK", "DEL")),
    ("CNI_ARGS", ()),
    ("CNI_PATH", ("ADD", "CHECK", "DEL", "GC", "STATUS")),
)


class CmdArgs:
    """One invocation's command and its environment parameters."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(self, values: "dict[str, str]") -> None:
        self.command = values["CNI_COMMAND"]
        self.container_id = values["CNI_CONTAINERID"]
        self.netns = values["CNI_NETNS"]
        self.ifname = values["CNI_IFNAME"]
        self.args = values["CNI_ARGS"]
        self.path = values["CNI_PATH"]


def valid_container_id(value: str) -> bool:
    """``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$`` (also the rule for network names)."""
    return bool(value) and value[0] in _ALNUM and not value[1:].strip(_ID_REST)


def _is_space(c: str) -> bool:
    # Go's unicode.IsSpace; Python's isspace() also counts the \x1c-\x1f separators.
    return c.isspace() and not "\x1c" <= c <= "\x1f"


def validate_ifname(value: str) -> None:
    """``CniError`` code 4 unless ``value`` is a usable Linux interface name."""
    if not value:
        raise CniError(ERR_INVALID_ENV, "interface name is empty")
    if len(value.encode("utf-8", "surrogateescape")) > _MAX_IFNAME:
        raise CniError(
            ERR_INVALID_ENV,
            "interface name is too long",
            f"interface name should be less than {_MAX_IFNAME + 1} characters",
        )
    if value in (".", ".."):
        raise CniError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or _is_space(c) for c in value):
        raise CniError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


def _validate_container_id(value: str) -> None:
    if not valid_container_id(value):
        raise CniError(ERR_INVALID_ENV, "invalid characters in containerID", value)


_VALIDATORS = {"CNI_CONTAINERID": _validate_container_id, "CNI_IFNAME": validate_ifname}


def read_cmd_args(environ: "Mapping[str, str]") -> "CmdArgs | None":
    """Read and validate ``CNI_*``; ``None`` when ``CNI_COMMAND`` is unset ("about" output).

    As in the skel: walk the variables, validating the present ones the command needs (the
    first bad one wins) and collecting missing ones into one code-4 error. Unlike the skel, an
    unknown command is reported before the config is looked at.
    """
    command = environ.get("CNI_COMMAND", "")
    if not command:
        return None
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    values: dict[str, str] = {}
    missing: list[str] = []
    for name, needed_by in _REQUIRED:
        value = environ.get(name, "")
        values[name] = value
        if command not in needed_by:
            continue
        if not value:
            missing.append(name)
        elif name in _VALIDATORS:
            _VALIDATORS[name](value)
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return CmdArgs(values)
