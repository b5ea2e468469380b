"""flanneld flag parsing: Go flag syntax, defaults, FLANNELD_* env fallback, systemd shape."""
# ruff: noqa: E501  (tables of cases read best one per line)

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyflannel.cli.flags import (
    FLAGS,
    Notice,
    Options,
    env_name,
    log_notices,
    parse_flags,
    usage_text,
)
from pyflannel.errors import ConfigError


def parse(*argv: str, **env: str) -> Options:
    return parse_flags(list(argv), env)


def flag_error(*argv: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(*argv, **env)
    assert info.value.hint
    return info.value


# --- defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "default"),
    [
        ("etcd_endpoints", ("http://127.0.0.1:4001", "http://127.0.0.1:2379")),
        ("etcd_prefix", "/coreos.com/network"),
        ("etcd_keyfile", ""),
        ("etcd_certfile", ""),
        ("etcd_cafile", ""),
        ("etcd_username", ""),
        ("etcd_password", ""),
        ("iface", ()),
        ("iface_regex", ()),
        ("iface_can_reach", ""),
        ("public_ip", ""),
        ("public_ipv6", ""),
        ("subnet_file", "/run/flannel/subnet.env"),
        ("subnet_lease_renew_margin", 60),
        ("ip_masq", False),
        ("ip_masq_fully_random_disable", False),
        ("iptables_resync", 5),
        ("iptables_forward_rules", True),
        ("ip_blackhole_route", False),
        ("healthz_ip", "0.0.0.0"),
        ("healthz_port", 0),
        ("version", False),
        ("verbosity", 0),
        ("log_format", "console"),
        ("subnet_lease_ttl", 86400),
        ("subnet_lease_renew_retry", 60),
        ("help", False),
    ],
)
def test_defaults(attr: str, default: Any) -> None:
    opts = parse()
    assert getattr(opts, attr) == default
    assert getattr(Options(), attr) == default
    assert opts.notices == ()


def test_every_options_field_has_a_flag() -> None:
    attrs = {f.attr for f in FLAGS if f.attr}
    fields = set(Options.__dataclass_fields__) - {"notices", "help"}
    assert attrs == fields


# --- Go flag syntax ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--etcd-prefix=/x"],
        ["-etcd-prefix=/x"],
        ["--etcd-prefix", "/x"],
        ["-etcd-prefix", "/x"],
        ["-etcd-prefix", "/y", "--etcd-prefix=/x"],  # last one wins
    ],
)
def test_value_forms(argv: list[str]) -> None:
    assert parse(*argv).etcd_prefix == "/x"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ip-masq"], True),
        (["-ip-masq"], True),
        (["--ip-masq=true"], True),
        (["--ip-masq=1"], True),
        (["--ip-masq=T"], True),
        (["--ip-masq=TRUE"], True),
        (["--ip-masq=false"], False),
        (["--ip-masq=0"], False),
        (["--ip-masq=F"], False),
        (["--ip-masq=False"], False),
        (["--ip-masq", "--ip-masq=false"], False),
    ],
)
def test_bool_forms(argv: list[str], expected: bool) -> None:
    assert parse(*argv).ip_masq is expected


def test_bool_flag_does_not_take_next_argument() -> None:
    opts = parse("--ip-masq", "false", "--etcd-prefix=/x")
    # Go: "false" is the first non-flag argument, parsing stops there.
    assert opts.ip_masq is True
    assert opts.etcd_prefix == "/coreos.com/network"
    assert opts.notices == (
        Notice("warning", "ignoring arguments after the flags: false --etcd-prefix=/x"),
    )


def test_default_true_bool_turned_off() -> None:
    assert parse("--iptables-forward-rules=false").iptables_forward_rules is False


def test_string_flag_takes_next_argument_even_if_it_looks_like_a_flag() -> None:
    assert parse("--etcd-password", "--secret").etcd_password == "--secret"


def test_list_flags_repeat_in_order() -> None:
    opts = parse("--iface", "eth1", "-iface=198.51.100.7", "--iface-regex", "^eth", "--iface=eth0")
    assert opts.iface == ("eth1", "198.51.100.7", "eth0")
    assert opts.iface_regex == ("^eth",)


def test_double_dash_ends_flags() -> None:
    opts = parse("--ip-masq", "--", "--iface=eth0")
    assert opts.ip_masq and opts.iface == ()


@pytest.mark.parametrize(
    ("text", "value"),
    [("90", 90), ("0x10", 16), ("010", 8), ("0o17", 15), ("0b101", 5), ("1_0", 10), ("+7", 7)],
)
def test_go_int_syntax(text: str, value: int) -> None:
    assert parse(f"--iptables-resync={text}").iptables_resync == value


def test_verbosity_level() -> None:
    assert parse("-v", "4").verbosity == 4
    assert parse("--v=2").verbosity == 2


def test_etcd_endpoints_split_on_commas() -> None:
    opts = parse("--etcd-endpoints=https://198.51.100.1:2379, https://198.51.100.2:2379")
    assert opts.etcd_endpoints == ("https://198.51.100.1:2379", "https://198.51.100.2:2379")


def test_tls_only_with_key_and_cert() -> None:
    assert not parse("--etcd-certfile=/c").etcd_tls
    assert parse("--etcd-certfile=/c", "--etcd-keyfile=/k").etcd_tls


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "flag provided but not defined: -bogus"),
        (["-etcd_prefix=/x"], "flag provided but not defined: -etcd_prefix"),
        (["---ip-masq"], "bad flag syntax: ---ip-masq"),
        (["-=x"], "bad flag syntax: -=x"),
        (["--etcd-prefix"], "flag needs an argument: -etcd-prefix"),
        (["--ip-masq=yes"], "invalid boolean value 'yes' for -ip-masq: parse error"),
        (["--healthz-port=abc"], "invalid value 'abc' for flag -healthz-port: parse error"),
        (["--healthz-port=08"], "invalid value '08' for flag -healthz-port: parse error"),
        (["--iptables-resync=9223372036854775808"], "invalid value '9223372036854775808' for flag -iptables-resync: value out of range"),
        (["-v", "0x2"], "invalid value '0x2' for flag -v: parse error"),
        (["--etcd-endpoints= , "], "--etcd-endpoints ' , ' names no endpoint"),
        (["--log-format=xml"], "invalid --log-format 'xml'"),
        (["--iptables-resync=0"], "invalid --iptables-resync 0: must be between 1 and 2147483648"),
        (["--subnet-lease-ttl=0"], "invalid --subnet-lease-ttl 0: must be between 1 and 2147483648"),
        (["--subnet-lease-renew-retry=-1"], "invalid --subnet-lease-renew-retry -1: must be between 1 and 2147483648"),
        (["--healthz-port=65536"], "invalid --healthz-port 65536: must be between 0 and 65535"),
    ],
)  # fmt: skip
def test_flag_errors(argv: list[str], message: str) -> None:
    assert flag_error(*argv).message == message


@pytest.mark.parametrize("margin", ["0", "-5", "1440", "100000"])
def test_renew_margin_out_of_range(margin: str) -> None:
    err = flag_error(f"--subnet-lease-renew-margin={margin}")
    assert err.message == "Invalid subnet-lease-renew-margin option, out of acceptable range"
    assert "1 and 1439" in (err.hint or "")


def test_renew_margin_out_of_range_from_env() -> None:
    err = flag_error(FLANNELD_SUBNET_LEASE_RENEW_MARGIN="1440")
    assert err.message == "Invalid subnet-lease-renew-margin option, out of acceptable range"


@pytest.mark.parametrize("margin", [1, 1439])
def test_renew_margin_bounds_accepted(margin: int) -> None:
    assert parse(f"--subnet-lease-renew-margin={margin}").subnet_lease_renew_margin == margin


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["-help"], ["--ip-masq", "-h", "--bogus"]])
def test_help(argv: list[str]) -> None:
    assert parse(*argv, FLANNELD_IP_MASQ="true") == Options(help=True)


def test_help_after_unknown_flag_is_still_an_error() -> None:
    flag_error("--bogus", "--help")


def test_version_skips_env() -> None:
    assert parse("--version", FLANNELD_SUBNET_LEASE_RENEW_MARGIN="0") == Options(version=True)


def test_usage_lists_every_flag_with_default() -> None:
    text = usage_text("pyflanneld")
    assert text.startswith("Usage: pyflanneld [OPTION]...\n")
    for flag in FLAGS:
        assert f"  -{flag.name}" in text
    assert '(default "http://127.0.0.1:4001,http://127.0.0.1:2379")' in text
    assert "(default 60) [env FLANNELD_SUBNET_LEASE_RENEW_MARGIN]" in text
    assert "(default true) [env FLANNELD_IPTABLES_FORWARD_RULES]" in text


# --- ignored flags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-vmodule=foo=2"],
        ["-log_backtrace_at=x.go:1"],
    ],
)
def test_ignored_flags_are_accepted_with_a_warning(argv: list[str]) -> None:
    opts = parse(*argv)
    assert opts == Options()
    name = argv[0].lstrip("-").split("=")[0]
    assert opts.notices == (Notice("warning", opts.notices[0].message),)
    assert opts.notices[0].message.startswith(f"ignoring --{name}:")


# --- FLANNELD_* environment ----------------------------------------------------------------


def test_env_names() -> None:
    assert env_name("etcd-endpoints") == "FLANNELD_ETCD_ENDPOINTS"
    assert env_name("ip-masq") == "FLANNELD_IP_MASQ"
    assert env_name("v") == "FLANNELD_V"
    assert env_name("log_backtrace_at") == "FLANNELD_LOG_BACKTRACE_AT"
    assert env_name("a.b-c") == "FLANNELD_A_B_C"


def test_env_fills_flags_not_on_command_line() -> None:
    opts = parse(
        "--etcd-prefix=/cli",
        FLANNELD_ETCD_PREFIX="/env",
        FLANNELD_ETCD_ENDPOINTS="http://198.51.100.250:2379",
        FLANNELD_IP_MASQ="true",
        FLANNELD_V="3",
        FLANNELD_IFACE="eth0,eth1",
        FLANNELD_IFACE_REGEX="^en",
        FLANNELD_SUBNET_LEASE_RENEW_MARGIN="30",
        FLANNELD_SUBNET_LEASE_TTL="40",
        FLANNELD_LOG_FORMAT="json",
    )
    assert opts.etcd_prefix == "/cli"  # CLI wins
    assert opts.etcd_endpoints == ("http://198.51.100.250:2379",)
    assert opts.ip_masq is True
    assert opts.verbosity == 3
    assert opts.iface == ("eth0,eth1",)  # exactly one element, no comma splitting
    assert opts.iface_regex == ("^en",)
    assert opts.subnet_lease_renew_margin == 30
    assert opts.subnet_lease_ttl == 40
    assert opts.log_format == "json"
    assert opts.notices == ()


def test_cli_list_flag_blocks_env() -> None:
    assert parse("--iface=eth9", FLANNELD_IFACE="eth0").iface == ("eth9",)


def test_cli_bool_false_blocks_env() -> None:
    assert parse("--ip-masq=false", FLANNELD_IP_MASQ="true").ip_masq is False


def test_empty_env_ignored() -> None:
    assert parse(FLANNELD_ETCD_PREFIX="", FLANNELD_IPTABLES_FORWARD_RULES="") == Options()


def test_invalid_env_logged_and_default_kept() -> None:
    opts = parse(FLANNELD_IP_MASQ="yes", FLANNELD_HEALTHZ_PORT="http", FLANNELD_ETCD_PREFIX="/p")
    assert opts.ip_masq is False
    assert opts.healthz_port == 0
    assert opts.etcd_prefix == "/p"
    assert [n.level for n in opts.notices] == ["error", "error"]
    assert "FLANNELD_IP_MASQ" in opts.notices[0].message
    assert "FLANNELD_HEALTHZ_PORT" in opts.notices[1].message


def test_flanneld_version_env_has_no_effect() -> None:
    assert parse(FLANNELD_VERSION="true").version is False


def test_kube_flags_are_parsed() -> None:
    opts = parse(
        "--kube-subnet-mgr",
        "--kube-api-url=https://198.51.100.9:6443",
        "--kubeconfig-file",
        "/etc/k",
        "--kube-annotation-prefix=example.com/x",
        "--net-config-path=/x.json",
        "--set-node-network-unavailable=false",
    )
    assert opts.notices == ()
    assert opts.kube_subnet_mgr is True
    assert opts.kube_api_url == "https://198.51.100.9:6443"
    assert opts.kubeconfig_file == "/etc/k"
    assert opts.kube_annotation_prefix == "example.com/x"
    assert opts.net_config_path == "/x.json"
    assert opts.set_node_network_unavailable is False


def test_kube_flag_defaults_are_flanneld_s() -> None:
    opts = parse()
    assert opts.kube_subnet_mgr is False
    assert opts.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert opts.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert opts.set_node_network_unavailable is True


def test_kube_env_fallbacks() -> None:
    opts = parse(
        FLANNELD_KUBE_SUBNET_MGR="true",
        FLANNELD_KUBECONFIG_FILE="/k",
        FLANNELD_NET_CONFIG_PATH="/n.json",
        FLANNELD_KUBE_ANNOTATION_PREFIX="a.b",
    )
    assert opts.notices == ()
    assert (opts.kube_subnet_mgr, opts.kubeconfig_file, opts.net_config_path) == (
        True,
        "/k",
        "/n.json",
    )
    assert opts.kube_annotation_prefix == "a.b"
    # The command line wins over the environment, as for every flag.
    assert (
        parse("--kube-subnet-mgr=false", FLANNELD_KUBE_SUBNET_MGR="true").kube_subnet_mgr is False
    )


def test_unrelated_env_ignored() -> None:
    assert parse(FLANNEL_OPTIONS="--bogus", FLANNELD_BOGUS="1") == Options()


# --- the seed's systemd shape --------------------------------------------------------------


def _systemd_environment_file(text: str) -> dict[str, str]:
    """Just enough of systemd's EnvironmentFile= syntax: KEY=VALUE, quotes, comments."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = " ".join(shlex.split(value))
    return env


def _systemd_exec_start(line: str, env: dict[str, str]) -> list[str]:
    """ExecStart=: an unbraced ``$VAR`` standing alone splits into words on whitespace."""
    argv: list[str] = []
    for word in shlex.split(line):
        if word.startswith("$") and not word.startswith("${"):
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(word)
    return argv


def test_seed_flannel_options_environment_file(tmp_path: Path) -> None:
    env_file = tmp_path / "flanneld"
    env_file.write_text(
        "# Flanneld configuration options\n"
        'FLANNEL_OPTIONS="--etcd-endpoints=http://198.51.100.250:2379 '
        '--etcd-prefix=/coreos.com/network"\n'
    )
    env = _systemd_environment_file(env_file.read_text())
    argv = _systemd_exec_start("/usr/local/bin/pyflanneld --ip-masq $FLANNEL_OPTIONS", env)
    assert argv[1:] == [
        "--ip-masq",
        "--etcd-endpoints=http://198.51.100.250:2379",
        "--etcd-prefix=/coreos.com/network",
    ]
    # systemd also exports FLANNEL_OPTIONS itself; it is not a FLANNELD_* variable.
    opts = parse_flags(argv[1:], env)
    assert opts.ip_masq is True
    assert opts.etcd_endpoints == ("http://198.51.100.250:2379",)
    assert opts.etcd_prefix == "/coreos.com/network"
    assert opts.notices == ()


def test_seed_shape_without_flannel_options() -> None:
    argv = _systemd_exec_start("/usr/local/bin/pyflanneld --ip-masq $FLANNEL_OPTIONS", {})
    assert parse_flags(argv[1:], {}) == Options(ip_masq=True)


# --- start-up cost -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    ["pyflannel.cli.flags", "pyflannel.subnet.subnet_env", "pyflannel.cli.mk_docker_opts"],
)
def test_light_modules_import_only_stdlib(module: str) -> None:
    code = (
        f"import sys; import {module}; "
        "heavy = {'pydantic', 'structlog', 'pyroute2', 'trio', 'pyetcd', 'grpc', "
        "'prometheus_client'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_log_notices_callback() -> None:
    seen: list[tuple[str, str]] = []
    opts = parse("-vmodule=x=1", FLANNELD_IP_MASQ="maybe")
    log_notices(opts, lambda level, message: seen.append((level, message)))
    assert [level for level, _ in seen] == ["warning", "error"]
