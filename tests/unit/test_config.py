"""Settings: defaults, file formats, environment and override precedence, error messages."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pydantic
import pytest
import yaml

from fastdns.config import (
    Settings,
    Upstream,
    dump_settings,
    load_settings,
)
from fastdns.errors import ConfigError

# SPEC §6 defaults, verbatim, except allowed_networks which also admits IPv6 clients.
SPEC_DEFAULTS = yaml.safe_load(
    """
server: {bind_address: 127.0.0.1, dns_port: 5353, web_port: 8080, workers: 4}
upstream_servers: [8.8.8.8, 1.1.1.1, 208.67.222.222]
cache: {max_size_mb: 100, default_ttl: 300, min_ttl: 1, max_ttl: 86400, negative_ttl: 300}
logging: {level: INFO, format: json, file: logs/dns-server.log, max_size_mb: 50, backup_count: 5}
security: {rate_limit_per_ip: 100, allowed_networks: [0.0.0.0/0, "::/0"], blacklist_enabled: true}
web: {enabled: true, real_time_updates: true, history_limit: 1000}
"""
)


def load(tmp_path: Path, text: str | None = None, name: str = "fastdns.yaml", **kw) -> Settings:
    """load_settings with an isolated (empty unless given) environment."""
    path = None
    if text is not None:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
    kw.setdefault("environ", {})
    return load_settings(path, **kw)


def config_errors(tmp_path: Path, text: str | None = None, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kw)
    return info.value.messages


# --- defaults -------------------------------------------------------------------------------


def test_defaults_match_spec() -> None:
    settings = Settings()
    dumped = dump_settings(settings)
    for section, values in SPEC_DEFAULTS.items():
        if section == "upstream_servers":
            continue
        for key, value in values.items():
            assert dumped[section][key] == value, f"{section}.{key}"
    assert settings.upstream_servers == [
        Upstream("8.8.8.8", 53),
        Upstream("1.1.1.1", 53),
        Upstream("208.67.222.222", 53),
    ]
    assert settings.security.allowed_networks == [
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    ]


def test_contract_defaults_beyond_spec() -> None:
    settings = Settings()
    assert settings.server.tcp_idle_timeout_s == 10.0
    assert settings.server.tcp_max_connections == 2000
    assert settings.server.udp_recv_buffer_bytes == 8_388_608
    assert settings.logging.query_log is True
    assert (settings.resolver.mode, settings.resolver.timeout_s) == ("forward", 5.0)
    assert settings.resolver.retry_interval_s == 1.0
    assert settings.resolver.use_0x20 is False  # off, like Unbound's use-caps-for-id


def test_no_sources_gives_defaults() -> None:
    assert load_settings(environ={}) == Settings()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("fastdns.yaml", ""),
        ("fastdns.yaml", "\n  \n"),
        ("fastdns.yaml", "# nothing configured yet\n"),
        ("fastdns.json", ""),
        ("fastdns.json", "\n"),
    ],
)
def test_empty_file_means_defaults(tmp_path: Path, name: str, text: str) -> None:
    assert load(tmp_path, text, name=name) == Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.server.dns_port = 53  # type: ignore[misc]


# --- files ----------------------------------------------------------------------------------


def test_yaml_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
server:
  bind_address: "::1"
  dns_port: 5300
upstream_servers: ["127.0.0.1:5301", "[::1]:5302"]
logging: {level: debug, file: null}
security: {allowed_networks: [10.1.2.3/8]}
""",
    )
    assert settings.server.bind_address == "::1"
    assert settings.server.dns_port == 5300
    assert settings.server.web_port == 8080  # untouched keys keep their defaults
    assert [str(u) for u in settings.upstream_servers] == ["127.0.0.1:5301", "[::1]:5302"]
    assert settings.logging.level == "DEBUG"
    assert settings.logging.file is None
    assert settings.security.allowed_networks == [ipaddress.ip_network("10.0.0.0/8")]


def test_json_file(tmp_path: Path) -> None:
    text = json.dumps({"cache": {"max_ttl": 3600}, "web": {"enabled": False}})
    settings = load(tmp_path, text, name="fastdns.json")
    assert settings.cache.max_ttl == 3600
    assert settings.web.enabled is False


def test_json_content_in_yaml_file(tmp_path: Path) -> None:
    assert load(tmp_path, '{"server": {"workers": 2}}').server.workers == 2


def test_dump_round_trips_through_yaml(tmp_path: Path) -> None:
    original = load(
        tmp_path,
        overrides={
            "upstream_servers": ["[2001:db8::1]:5301", "192.0.2.1"],
            "security": {"allowed_networks": ["192.0.2.0/24", "2001:db8::/32"]},
        },
    )
    text = yaml.safe_dump(dump_settings(original), sort_keys=False)
    assert load(tmp_path, text) == original


def test_dump_is_plain_json() -> None:
    dumped = dump_settings(Settings())
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["upstream_servers"] == ["8.8.8.8:53", "1.1.1.1:53", "208.67.222.222:53"]
    assert dumped["security"]["allowed_networks"] == ["0.0.0.0/0", "::/0"]
    assert list(dumped) == list(Settings.model_fields)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    messages = config_errors(tmp_path, "server:\n  dns_port: 5300\n  bind: a: b\n")
    assert len(messages) == 1
    assert "fastdns.yaml: line 3: mapping values are not allowed here" in messages[0]


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    messages = config_errors(tmp_path, '{\n  "server": {"dns_port": 5300,}\n}', name="c.json")
    assert len(messages) == 1
    assert "c.json: line 2:" in messages[0]


@pytest.mark.parametrize("text", ["- 8.8.8.8\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    (message,) = config_errors(tmp_path, text)
    assert "top level must be a mapping" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.yaml", environ={})
    assert info.value.messages == [f"config file {tmp_path / 'absent.yaml'}: no such file"]


# --- errors ---------------------------------------------------------------------------------


def test_unknown_key_is_named(tmp_path: Path) -> None:
    (message,) = config_errors(tmp_path, "server:\n  dnsport: 5300\n")
    assert message.startswith("server.dnsport: unknown key")
    assert "dns_port" in message  # the hint


def test_unknown_section_is_named(tmp_path: Path) -> None:
    (message,) = config_errors(tmp_path, "servers:\n  dns_port: 5300\n")
    assert message.startswith("servers: unknown key")


def test_bad_value_names_key_problem_and_value(tmp_path: Path) -> None:
    (message,) = config_errors(tmp_path, "cache:\n  min_ttl: -1\n")
    assert message == "cache.min_ttl: Input should be greater than or equal to 0 (got -1)"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server: {dns_port: 0}", "server.dns_port"),
        ("server: {dns_port: 65536}", "server.dns_port"),
        ("server: {workers: 0}", "server.workers"),
        ("server: {workers: 257}", "server.workers"),
        ("server: {tcp_idle_timeout_s: 0}", "server.tcp_idle_timeout_s"),
        ("server: {udp_recv_buffer_bytes: 1024}", "server.udp_recv_buffer_bytes"),
        ("server: {bind_address: localhost}", "server.bind_address"),
        ("server: {dns_port: fifty}", "server.dns_port"),
        ("server: 5300", "server"),
        ("cache: {max_size_mb: 0}", "cache.max_size_mb"),
        ("cache: {min_ttl: 600, max_ttl: 60}", "cache.max_ttl"),
        ("logging: {level: LOUD}", "logging.level"),
        ("logging: {format: xml}", "logging.format"),
        ("logging: {backup_count: -1}", "logging.backup_count"),
        ("security: {rate_limit_per_ip: -5}", "security.rate_limit_per_ip"),
        ("security: {allowed_networks: [10.0.0.0/8, not-a-net]}", "security.allowed_networks[1]"),
        ("upstream_servers: []", "upstream_servers"),
        ("upstream_servers: [1.1.1.1, dns.google]", "upstream_servers[1]"),
        ("resolver: {mode: iterate}", "resolver.mode"),
        ("resolver: {timeout_s: 2, retry_interval_s: 3}", "resolver.retry_interval_s"),
        ("web: {history_limit: -1}", "web.history_limit"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    (message,) = config_errors(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert "(got " in message


def test_every_error_is_reported(tmp_path: Path) -> None:
    messages = config_errors(
        tmp_path,
        """
server: {dns_port: 0, color: blue}
cache: {min_ttl: -1}
upstream_servers: [dns.google]
logging: {level: LOUD}
""",
        environ={"FASTDNS_CACHE__MAXTTL": "5"},
    )
    keys = [m.split(":")[0] for m in messages]
    assert sorted(keys) == sorted(
        [
            "FASTDNS_CACHE__MAXTTL",
            "server.dns_port",
            "server.color",
            "cache.min_ttl",
            "upstream_servers[0]",
            "logging.level",
        ]
    )


def test_file_and_environment_errors_are_reported_together(tmp_path: Path) -> None:
    messages = config_errors(
        tmp_path, "server: [\n", environ={"FASTDNS_SERVER__DNS_PORT": "x", "FASTDNS_NOPE": "1"}
    )
    assert any("fastdns.yaml: line" in m for m in messages)
    assert any(m.startswith("FASTDNS_NOPE: unknown setting nope") for m in messages)
    assert any(m.startswith("server.dns_port:") for m in messages)


def test_config_error_str_lists_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "cache: {min_ttl: -1}\nweb: {enabled: maybe}\n")
    assert "cache.min_ttl" in str(info.value)
    assert "web.enabled" in str(info.value)


# --- environment and overrides --------------------------------------------------------------


def test_environment_beats_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "server: {dns_port: 5300, workers: 2}\n",
        environ={"FASTDNS_SERVER__DNS_PORT": "5400"},
    )
    assert settings.server.dns_port == 5400
    assert settings.server.workers == 2


def test_overrides_beat_environment(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "server: {dns_port: 5300}\nupstream_servers: [192.0.2.1]\n",
        environ={"FASTDNS_SERVER__DNS_PORT": "5400", "FASTDNS_UPSTREAM_SERVERS": "192.0.2.2"},
        overrides={"server": {"dns_port": 5500}, "upstream_servers": ["192.0.2.3"]},
    )
    assert settings.server.dns_port == 5500
    assert settings.upstream_servers == [Upstream("192.0.2.3")]


def test_environment_value_types() -> None:
    settings = load_settings(
        environ={
            "FASTDNS_SERVER__DNS_PORT": "5300",
            "FASTDNS_SERVER__TCP_IDLE_TIMEOUT_S": "2.5",
            "FASTDNS_WEB__ENABLED": "false",
            "FASTDNS_LOGGING__QUERY_LOG": "true",
            "FASTDNS_LOGGING__LEVEL": "warning",
            "FASTDNS_LOGGING__FILE": "null",
            "FASTDNS_UPSTREAM_SERVERS": "127.0.0.1:5301, [::1]:5302",
            "FASTDNS_SECURITY__ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',
        }
    )
    assert settings.server.dns_port == 5300
    assert settings.server.tcp_idle_timeout_s == 2.5
    assert settings.web.enabled is False
    assert settings.logging.query_log is True
    assert settings.logging.level == "WARNING"
    assert settings.logging.file is None
    assert settings.upstream_servers == [Upstream("127.0.0.1", 5301), Upstream("::1", 5302)]
    assert [str(n) for n in settings.security.allowed_networks] == ["127.0.0.0/8", "::1/128"]


def test_environment_names_are_case_insensitive() -> None:
    settings = load_settings(environ={"fastdns_Server__Dns_Port": "5300"})
    assert settings.server.dns_port == 5300


def test_other_environment_variables_are_ignored() -> None:
    assert load_settings(environ={"PATH": "/bin", "FASTDNSX": "1", "DNS_PORT": "1"}) == Settings()


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTDNS_SERVER__WORKERS", "3")
    assert load_settings().server.workers == 3


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("FASTDNS_SERVER__DNSPORT", "unknown setting server.dnsport"),
        ("FASTDNS_SERVER_DNS_PORT", "did you mean FASTDNS_SERVER__DNS_PORT?"),
        ("FASTDNS_NOSUCH__KEY", "unknown setting nosuch"),
        ("FASTDNS_SERVER__DNS_PORT__X", "unknown setting server.dns_port.x"),
        ("FASTDNS_SERVER", "server is a section"),
    ],
)
def test_unknown_environment_names_are_errors(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: "1"})
    (message,) = info.value.messages
    assert message.startswith(f"{name}: ")
    assert expected in message


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FASTDNS_SERVER__DNS_PORT": "http"})
    (message,) = info.value.messages
    assert message.startswith("server.dns_port: ")
    assert "got 'http' from FASTDNS_SERVER__DNS_PORT" in message


def test_bad_environment_list_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FASTDNS_UPSTREAM_SERVERS": "[127.0.0.1"})
    (message,) = info.value.messages
    assert message.startswith("upstream_servers: ")
    assert "FASTDNS_UPSTREAM_SERVERS" in message


def test_overridden_value_is_not_blamed_on_the_environment() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={"FASTDNS_SERVER__DNS_PORT": "5300"}, overrides={"server": {"dns_port": 0}}
        )
    (message,) = info.value.messages
    assert "FASTDNS_SERVER__DNS_PORT" not in message


# --- upstream addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "text_form"),
    [
        ("127.0.0.1", "127.0.0.1", 53, "127.0.0.1:53"),
        ("127.0.0.1:5301", "127.0.0.1", 5301, "127.0.0.1:5301"),
        (" 192.0.2.1:53 ", "192.0.2.1", 53, "192.0.2.1:53"),
        ("[::1]:5301", "::1", 5301, "[::1]:5301"),
        ("[::1]", "::1", 53, "[::1]:53"),
        ("::1", "::1", 53, "[::1]:53"),
        ("2001:db8::1", "2001:db8::1", 53, "[2001:db8::1]:53"),
        ("2001:DB8:0:0::1", "2001:db8::1", 53, "[2001:db8::1]:53"),
    ],
)
def test_upstream_forms(text: str, host: str, port: int, text_form: str) -> None:
    upstream = Upstream.parse(text)
    assert (upstream.host, upstream.port) == (host, port)
    assert str(upstream) == text_form
    assert Upstream.parse(str(upstream)) == upstream
    settings = load_settings(environ={}, overrides={"upstream_servers": [text]})
    assert settings.upstream_servers == [upstream]


@pytest.mark.parametrize(
    "text", ["dns.google", "localhost", "one.one.one.one:53", "[dns.google]:53"]
)
def test_upstream_hostnames_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="IP address is required|brackets are only for IPv6"):
        Upstream.parse(text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"upstream_servers": [text]})
    (message,) = info.value.messages
    assert message.startswith("upstream_servers[0]: ")


@pytest.mark.parametrize(
    "text", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:dns", "[::1]:", "[127.0.0.1]:53", ""]
)
def test_upstream_bad_forms_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Upstream.parse(text)


def test_upstream_must_be_a_string() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"upstream_servers": [53]})
    assert info.value.messages[0].startswith("upstream_servers[0]: must be a string")


def test_upstream_is_a_frozen_value() -> None:
    upstream = Upstream("192.0.2.1", 5301)
    assert upstream == Upstream.parse("192.0.2.1:5301")
    assert hash(upstream) == hash(Upstream.parse("192.0.2.1:5301"))
    with pytest.raises(AttributeError):
        upstream.port = 53  # type: ignore[misc]


# --- schema ---------------------------------------------------------------------------------


def test_json_schema() -> None:
    schema = Settings.model_json_schema()
    assert schema["additionalProperties"] is False
    upstreams = schema["properties"]["upstream_servers"]
    assert upstreams["items"]["type"] == "string"
    assert upstreams["default"] == ["8.8.8.8", "1.1.1.1", "208.67.222.222"]
    server = schema["$defs"]["ServerSettings"]["properties"]
    assert server["dns_port"]["maximum"] == 65535
    assert json.loads(json.dumps(schema)) == schema
