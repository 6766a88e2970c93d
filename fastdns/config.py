"""Typed settings: defaults, a YAML/JSON file, FASTDNS_* environment variables, validation.

Owns the shape of the configuration and every message about it being wrong. Precedence, lowest
first: built-in defaults < config file < environment < explicit overrides (command-line flags).
All problems are collected and raised together as one `ConfigError`, each naming its dotted key.
Does not open sockets, start anything or watch files for reload (server.py does that).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from fastdns.errors import ConfigError

__all__ = [
    "CacheSettings",
    "DnssecSettings",
    "LoggingSettings",
    "ResolverSettings",
    "SecuritySettings",
    "ServerSettings",
    "Settings",
    "Upstream",
    "WebSettings",
    "dump_settings",
    "load_settings",
]

ENV_PREFIX = "FASTDNS_"
DNS_PORT = 53

# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------

_BRACKETED = re.compile(r"\[(?P<host>[^\]]+)\](?::(?P<port>[^:]*))?")


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream resolver address: an IP literal and a port.

    Parsed from "192.0.2.1", "192.0.2.1:5301", "2001:db8::1", "[2001:db8::1]" or
    "[2001:db8::1]:5301". Hostnames are rejected: resolving them would need DNS before the DNS
    server is up, and would let whoever answers that lookup choose our upstream.
    """

    host: str
    port: int = DNS_PORT

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """Parse the string forms above; raise ValueError saying what is wrong."""
        text = text.strip()
        port_text: str | None = None
        if match := _BRACKETED.fullmatch(text):
            host, port_text = match["host"], match["port"]
            if not _is_ip(host, version=6):
                raise ValueError("brackets are only for IPv6 addresses, as in [2001:db8::1]:53")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:
            host = text  # bare IPv4, or bare IPv6 (which takes the default port; bracket it for another)
        if not _is_ip(host):
            raise ValueError(
                "an IP address is required (like 192.0.2.1, 192.0.2.1:5301 or [2001:db8::1]:53); "
                "hostnames are not resolved"
            )
        return cls(str(ipaddress.ip_address(host)), _parse_port(port_text))

    def __str__(self) -> str:
        """The address in "host:port" form, IPv6 in brackets (RFC 3986 §3.2.2 style)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def _validate(cls, value: object) -> Upstream:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError(
                "upstream_type", "must be a string like 192.0.2.1 or [2001:db8::1]:53"
            )
        try:
            return cls.parse(value)
        except ValueError as exc:
            raise PydanticCustomError("upstream_address", str(exc)) from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from the string form (or an Upstream); serialize back to the string form."""
        return core_schema.json_or_python_schema(
            json_schema=core_schema.no_info_after_validator_function(
                cls._validate, core_schema.str_schema()
            ),
            python_schema=core_schema.no_info_plain_validator_function(cls._validate),
            serialization=core_schema.to_string_ser_schema(),
        )


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def _parse_port(text: str | None) -> int:
    if text is None:
        return DNS_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def _lenient_network(value: object) -> object:
    """Accept host bits in a network ("192.0.2.7/24" means 192.0.2.0/24), like ACLs elsewhere."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass  # left for IPvAnyNetwork to reject with its own message
    return value


Network = Annotated[IPvAnyNetwork, BeforeValidator(_lenient_network)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(BaseModel):
    """Where and how the DNS listeners run."""

    model_config = _STRICT

    bind_address: str = Field(default="127.0.0.1", description="IP address to listen on (v4 or v6)")
    dns_port: int = Field(default=5353, ge=1, le=65535, description="UDP and TCP port for DNS")
    web_port: int = Field(default=8080, ge=1, le=65535, description="TCP port of the admin web app")
    workers: int = Field(default=4, ge=1, le=256, description="Worker processes (SO_REUSEPORT)")
    # RFC 7766 §6.2.3: servers should close idle TCP connections, on the order of seconds.
    tcp_idle_timeout_s: float = Field(
        default=10.0, gt=0, description="Close idle TCP clients after this"
    )
    tcp_max_connections: int = Field(
        default=2000, ge=1, description="Concurrent TCP clients per worker"
    )
    udp_recv_buffer_bytes: int = Field(
        default=8_388_608, ge=65536, description="SO_RCVBUF for the UDP socket"
    )
    udp_batching: bool = Field(
        default=True,
        description="Serve UDP in recvmmsg/sendmmsg batches where the platform has them",
    )

    @field_validator("bind_address")
    @classmethod
    def _bind_address_is_ip(cls, value: str) -> str:
        if not _is_ip(value.strip()):
            raise PydanticCustomError(
                "ip_address", "must be an IP address like 127.0.0.1, 0.0.0.0 or ::1"
            )
        return str(ipaddress.ip_address(value.strip()))


class CacheSettings(BaseModel):
    """Size bound and TTL policy of the answer cache."""

    model_config = _STRICT

    max_size_mb: float = Field(default=100.0, gt=0, description="Memory bound of cached replies")
    default_ttl: int = Field(default=300, ge=0, description="TTL when a reply carries none")
    min_ttl: int = Field(default=1, ge=0, description="Lower clamp on cached TTLs")
    max_ttl: int = Field(default=86400, ge=0, description="Upper clamp on cached TTLs")
    # RFC 2308 §5: the negative TTL is also bounded by the SOA; this is our ceiling.
    negative_ttl: int = Field(default=300, ge=0, description="Ceiling for NXDOMAIN/NODATA caching")
    ttl_overrides: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Cache time per domain (and every name below it), replacing the clamps",
    )

    @field_validator("ttl_overrides")
    @classmethod
    def _domains_are_names(cls, value: dict[str, int]) -> dict[str, int]:
        normalised = {}
        for domain, ttl in value.items():
            name = domain.strip().rstrip(".").lower()
            labels = name.split(".") if name else []
            if not all(0 < len(label) <= 63 for label in labels) or len(name) > 253:
                raise PydanticCustomError(
                    "domain_name", "'{domain}' is not a domain name", {"domain": domain}
                )
            normalised[name] = ttl
        return normalised

    @field_validator("max_ttl")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        min_ttl = info.data.get("min_ttl")
        if min_ttl is not None and value < min_ttl:
            raise PydanticCustomError(
                "ttl_order", "must be at least cache.min_ttl ({min_ttl})", {"min_ttl": min_ttl}
            )
        return value


class LoggingSettings(BaseModel):
    """Application log and the JSON query log."""

    model_config = _STRICT

    level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = Field(default="INFO", description="Minimum level (any case accepted)")
    format: Annotated[Literal["json", "text"], BeforeValidator(_lower)] = Field(
        default="json", description="Application log line format"
    )
    file: str | None = Field(
        default="logs/dns-server.log", description='Query log file; null or "-" means stdout'
    )
    max_size_mb: float = Field(default=50.0, gt=0, description="Rotate the log file at this size")
    backup_count: int = Field(default=5, ge=0, description="Rotated files to keep")
    query_log: bool = Field(default=True, description="Log every query as a JSON line")


class SecuritySettings(BaseModel):
    """Who may query, and how fast."""

    model_config = _STRICT

    rate_limit_per_ip: int = Field(
        default=100, ge=0, description="Queries/s per client IP; 0 = unlimited"
    )
    allowed_networks: list[Network] = Field(
        default=["0.0.0.0/0", "::/0"], validate_default=True, description="Clients allowed (CIDR)"
    )
    # Loopback sources cannot be spoofed from the network (the kernel drops them on other
    # interfaces), so they cannot turn the server into an amplifier: local tools go unthrottled.
    rate_limit_exempt: list[Network] = Field(
        default=["127.0.0.0/8", "::1/128"],
        validate_default=True,
        description="Clients never rate limited (CIDR)",
    )
    blacklist_enabled: bool = Field(default=True, description="Apply the domain blocklists")


class WebSettings(BaseModel):
    """The admin web app."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Serve the admin web app on server.web_port")
    real_time_updates: bool = Field(default=True, description="Push queries over WebSocket")
    history_limit: int = Field(
        default=1000, ge=0, description="Recent queries kept for the dashboard"
    )


def _loadable_file(path: str | None, load: Callable[[str], object], code: str) -> str | None:
    """`path` if `load` reads it without a ValueError (its message becomes the config error).
    The loaders live in resolve/ and are imported by the validators on use, not at import."""
    if path is not None:
        try:
            load(path)
        except ValueError as exc:
            raise PydanticCustomError(code, "{problem}", {"problem": str(exc)}) from None
    return path


class ResolverSettings(BaseModel):
    """How misses are resolved."""

    model_config = _STRICT

    mode: Annotated[Literal["forward", "recursive"], BeforeValidator(_lower)] = Field(
        default="forward", description="Forward to upstream_servers, or recurse from the root"
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Whole budget for answering one miss")
    retry_interval_s: float = Field(
        default=1.0, gt=0, description="Also ask the next upstream after this long without a reply"
    )
    root_hints: str | None = Field(
        default=None,
        description="File of root servers in named.root format; the built-in IANA hints when null",
    )
    query_loopback: bool = Field(
        default=False, description="Allow name servers on 127.0.0.0/8 and ::1 (labs, tests)"
    )
    max_depth: int = Field(
        default=30, ge=1, le=100, description="Referrals + CNAMEs + glueless lookups per question"
    )
    nameserver_port: int = Field(
        default=DNS_PORT, ge=1, le=65535,
        description="Port authoritative servers are asked on (53; another only in labs)",
    )
    qname_minimisation: bool = Field(
        default=True, description="Reveal one label at a time to each zone (RFC 9156)"
    )
    use_0x20: bool = Field(
        default=False,
        description="Send qnames to name servers in random letter case; replies must echo it",
    )

    @field_validator("root_hints")
    @classmethod
    def _root_hints_readable(cls, value: str | None) -> str | None:
        from fastdns.resolve.hints import load_root_hints

        return _loadable_file(value, load_root_hints, "root_hints")

    @field_validator("retry_interval_s")
    @classmethod
    def _retry_within_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout_s = info.data.get("timeout_s")
        if timeout_s is not None and value > timeout_s:
            raise PydanticCustomError(
                "retry_order",
                "must not exceed resolver.timeout_s ({timeout_s})",
                {"timeout_s": timeout_s},
            )
        return value


class DnssecSettings(BaseModel):
    """DNSSEC validation of what the resolver fetches (RFC 4033-4035)."""

    model_config = _STRICT

    enabled: bool = Field(default=False, description="Validate answers; SERVFAIL for bogus ones")
    trust_anchor: str | None = Field(
        default=None,
        description="File of DS or DNSKEY records to trust; the built-in root KSKs when null",
    )

    @field_validator("trust_anchor")
    @classmethod
    def _trust_anchor_readable(cls, value: str | None) -> str | None:
        from fastdns.resolve.anchors import load_trust_anchors

        return _loadable_file(value, load_trust_anchors, "trust_anchor")


class Settings(BaseModel):
    """The whole fastdns configuration (SPEC §6)."""

    model_config = _STRICT

    server: ServerSettings = Field(default_factory=ServerSettings)
    upstream_servers: list[Upstream] = Field(
        default=["8.8.8.8", "1.1.1.1", "208.67.222.222"],
        min_length=1,
        validate_default=True,
        description="Upstream resolvers: IP, IP:port, [IPv6] or [IPv6]:port",
    )
    cache: CacheSettings = Field(default_factory=CacheSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    resolver: ResolverSettings = Field(default_factory=ResolverSettings)
    dnssec: DnssecSettings = Field(default_factory=DnssecSettings)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

KeyPath = tuple[str, ...]


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from defaults, the file at `path`, `environ` (default os.environ) and
    `overrides` (a nested dict, e.g. from command-line flags), later sources winning.

    Raises ConfigError listing every problem found, each naming its dotted key.
    """
    errors: list[str] = []
    file_data: dict[str, Any] = {}
    if path is not None:
        file_data = _read_file(Path(path), errors)
    env_data, env_sources = _read_environ(os.environ if environ is None else environ, errors)
    overrides = overrides or {}
    for overridden in _leaf_paths(overrides):
        env_sources.pop(overridden, None)

    merged = _merge(_merge(file_data, env_data), overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        errors.extend(_describe(error, env_sources) for error in exc.errors(include_url=False))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    return settings


def dump_settings(settings: Settings) -> dict[str, Any]:
    """Settings as a plain JSON-able dict: upstreams and networks as strings, field order kept."""
    return settings.model_dump(mode="json")


def _read_file(path: Path, errors: list[str]) -> dict[str, Any]:
    """Parse a .json file as JSON and anything else as YAML (a JSON superset); {} on error."""
    label = f"config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.append(f"{label}: no such file")
        return {}
    except UnicodeDecodeError:
        errors.append(f"{label}: not UTF-8 text")
        return {}
    except OSError as exc:
        errors.append(f"{label}: cannot read it ({exc.strerror or exc})")
        return {}
    if not text.strip():
        return {}
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        errors.append(f"{label}: line {exc.lineno}: {exc.msg}")
        return {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        errors.append(f"{label}: {where}{exc.problem or exc.context}")
        return {}
    except yaml.YAMLError as exc:
        errors.append(f"{label}: {exc}")
        return {}
    if data is None:  # only comments
        return {}
    if not isinstance(data, dict):
        errors.append(
            f"{label}: the top level must be a mapping of sections (server:, cache:, ...), "
            f"not {_type_name(data)}"
        )
        return {}
    return data


def _read_environ(
    environ: Mapping[str, str], errors: list[str]
) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """Turn FASTDNS_<SECTION>__<KEY> (any case) variables into a nested dict.

    Also returns which variable set each key, so a bad value can be traced to it. Unknown
    FASTDNS_ names are errors: a typo must not silently leave a default in place.
    """
    data: dict[str, Any] = {}
    sources: dict[KeyPath, str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        key_path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        annotation, problem = _setting_annotation(key_path)
        if problem:
            errors.append(f"{name}: {problem}")
            continue
        try:
            value = _env_value(environ[name], annotation)
        except ValueError as exc:
            errors.append(f"{'.'.join(key_path)}: {exc} (got {environ[name]!r} from {name})")
            continue
        target = data
        for part in key_path[:-1]:
            target = target.setdefault(part, {})
        target[key_path[-1]] = value
        sources[key_path] = name
    return data, sources


def _setting_annotation(key_path: KeyPath) -> tuple[Any, str | None]:
    """The annotation of the setting at `key_path`, or why that path names no setting."""
    model: type[BaseModel] = Settings
    for depth, part in enumerate(key_path):
        field = model.model_fields.get(part)
        if field is None:
            return None, f"unknown setting {'.'.join(key_path[: depth + 1])}{_env_hint(key_path)}"
        annotation = field.annotation
        if _is_section(annotation):
            model = annotation
            continue
        if depth != len(key_path) - 1:
            return None, f"unknown setting {'.'.join(key_path)}{_env_hint(key_path)}"
        return annotation, None
    example = f"{ENV_PREFIX}{key_path[-1].upper()}__{next(iter(model.model_fields)).upper()}"
    return None, f"{key_path[-1]} is a section; set its keys one by one, e.g. {example}"


def _env_hint(key_path: KeyPath) -> str:
    """' (did you mean FASTDNS_X__Y?)' for the closest valid variable name, or ''."""
    names = []
    for name, field in Settings.model_fields.items():
        if _is_section(field.annotation):
            names += [f"{ENV_PREFIX}{name}__{key}".upper() for key in field.annotation.model_fields]
        else:
            names.append(f"{ENV_PREFIX}{name}".upper())
    wanted = ENV_PREFIX + "__".join(key_path).upper()
    close = difflib.get_close_matches(wanted, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _env_value(raw: str, annotation: Any) -> Any:
    """Strings stay strings (pydantic's lax mode reads "5300", "true", "1.5" by type); a list
    is a comma-separated string or a JSON/YAML list; a mapping is JSON/YAML; null/none/~/empty
    clear an optional value.
    """
    text = raw.strip()
    if get_origin(annotation) is list:
        if not text.startswith("["):
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, list):
            raise ValueError("not a valid list; use a,b,c or a JSON list")
        return value
    if get_origin(annotation) is dict:
        try:
            value = yaml.safe_load(text) if text else {}
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise ValueError('not a valid mapping; use JSON, e.g. {"example.org": 60}')
        return value
    if type(None) in get_args(annotation) and text.lower() in ("", "null", "none", "~"):
        return None
    return text


def _describe(error: ErrorDetails, sources: Mapping[KeyPath, str]) -> str:
    """One line per pydantic error: "<dotted key>: <problem> (got <value>[ from <ENV_VAR>])"."""
    loc = error["loc"]
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        hint = _suggestion(str(loc[-1]), model) if model is not None else ""
        return f"{key}: unknown key{hint}"
    got = f"got {_short_repr(error['input'])}"
    for depth in range(len(loc), 0, -1):
        source = sources.get(tuple(str(part) for part in loc[:depth]))
        if source is not None:
            got += f" from {source}"
            break
    return f"{key}: {error['msg']} ({got})"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not _is_section(field.annotation):
            return None
        model = field.annotation
    return model


def _is_section(annotation: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _suggestion(name: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(name.lower(), list(model.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _dotted(loc: tuple[int | str, ...]) -> str:
    """("upstream_servers", 1) -> "upstream_servers[1]"; ("cache", "min_ttl") -> "cache.min_ttl"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _leaf_paths(data: Mapping[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    paths: list[KeyPath] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            paths.extend(_leaf_paths(value, (*prefix, str(key))))
        else:
            paths.append((*prefix, str(key)))
    return paths


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings: sections merge key by key, any other value in `top` replaces."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
