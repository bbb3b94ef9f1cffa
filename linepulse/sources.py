"""Where the plant's signals come from: OPC-UA endpoints and MQTT brokers, in the config.

The same section drives `linepulse ingest` (which subscribes to these sources) and
`linepulse simulate` (which serves them): an OPC-UA source's machines are exposed by the
simulator's asyncua server at that endpoint with those node ids, and an MQTT source's
machines are published on that broker with that topic pattern or as Sparkplug B devices.

Secrets (passwords) never sit in the file in clear unless the user puts them there: each
can be given as `password_env` (an environment variable's name) or `password_file`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Signals an ingester may carry besides any analog tag (speed, temperature...).
_SIGNAL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_PLACEHOLDERS = ("{line}", "{machine}", "{signal}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(_Model):
    """A username and its password, from the file, an environment variable or a file."""

    username: str = Field(min_length=1)
    password: str | None = Field(default=None, repr=False)
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Credentials:
        given = [k for k in ("password", "password_env", "password_file") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of password, password_env, password_file; got {given}")
        return self

    def secret(self) -> str | None:
        """The password, read when needed (never logged, never in a repr)."""
        if self.password is not None:
            return self.password
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return None


# -- OPC-UA --------------------------------------------------------------------------------


class OpcuaSecurity(_Model):
    """Message security. Sign and SignAndEncrypt need the client's certificate and key
    (PEM or DER); `server_certificate` pins the server's."""

    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    policy: Literal["Basic256Sha256"] = "Basic256Sha256"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None

    @model_validator(mode="after")
    def _keys_for_security(self) -> OpcuaSecurity:
        if self.mode != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"mode {self.mode} needs certificate and private_key")
        return self


# A NodeId in its string form (OPC UA Part 6 §5.3.1.10): an optional namespace, by index
# (`ns=2;`) or by URI (`nsu=urn:plant:press;`, which survives a server that renumbers its
# namespaces on restart), then the identifier: numeric, string, GUID or opaque (base64).
_NODE_ID = re.compile(
    r"^(?:(?:ns=\d+|nsu=[^;]+);)?"
    r"(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$",
    re.DOTALL,
)
_BROWSE_STEP = re.compile(r"^(\d+):(.+)$", re.DOTALL)


def browse_path_steps(text: str) -> list[tuple[int, str]]:
    """The (namespace index, browse name) steps of a browse path `2:Plant/2:press-1/2:State`,
    from the Objects folder.

    Each step is `<namespace index>:<browse name>`: a browse name is qualified by its
    namespace, and a step without one (`Objects/Press1/State`) would silently look in
    namespace 0, where no plant tag lives. A name may hold any character but `/` (dots and
    dashes are common in PLC tag names, which is why this is not the Part 4 §A.2
    RelativePath text syntax, where `.` and `-` would need escaping).

    Raises `ValueError` naming the step at fault."""
    steps = text.strip().strip("/").split("/")
    if not steps or any(not step for step in steps):
        raise ValueError(f"browse path {text!r} has an empty step")
    names = []
    for step in steps:
        match = _BROWSE_STEP.match(step)
        if match is None:
            raise ValueError(
                f"browse path {text!r}: step {step!r} must be <namespace index>:<name>, "
                "e.g. 2:Plant/2:press-1/2:State"
            )
        names.append((int(match.group(1)), match.group(2)))
    return names


class OpcuaNode(_Model):
    """One signal's node: a NodeId (`ns=2;s=Press1.State`, or `nsu=<namespace URI>;s=...`,
    resolved against the server's NamespaceArray at each connect) or a browse path from
    the Objects folder (`2:Line1/2:Press1/2:State`, namespace index before each name)."""

    node_id: str | None = None
    browse_path: str | None = None
    # Absolute deadband for an analog value (the source's units); none for counters.
    deadband: float | None = Field(default=None, ge=0)

    @field_validator("node_id")
    @classmethod
    def _node_id_syntax(cls, value: str | None) -> str | None:
        if value is not None and not _NODE_ID.match(value.strip()):
            raise ValueError(
                f"{value!r} is not a NodeId: give ns=<index>;s=<name> (or i=, g=, b=), "
                "or nsu=<namespace URI>;s=<name>, e.g. nsu=urn:plant:press;s=Press1.State"
            )
        return None if value is None else value.strip()

    @field_validator("browse_path")
    @classmethod
    def _browse_path_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            browse_path_steps(value)
        return value

    @model_validator(mode="after")
    def _one_address(self) -> OpcuaNode:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id and browse_path")
        return self


class OpcuaMachine(_Model):
    machine: str = Field(min_length=1)
    # signal -> node; a plain string is a NodeId.
    nodes: dict[str, OpcuaNode] = Field(min_length=1)

    @field_validator("nodes", mode="before")
    @classmethod
    def _strings_are_node_ids(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"node_id": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("nodes")
    @classmethod
    def _signal_names(cls, value: dict[str, OpcuaNode]) -> dict[str, OpcuaNode]:
        for signal in value:
            if not _SIGNAL.match(signal):
                raise ValueError(f"signal name {signal!r} is not a plain identifier")
        return value


class OpcuaSource(_Model):
    id: str = Field(min_length=1)
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$")
    publishing_interval_ms: int = Field(default=500, ge=10)
    # How often the server samples a node (OPC UA Part 4 §5.12.1.2). Unset: 0, the fastest
    # the server offers, for state, counters, product and reason, whose every change the
    # KPIs need (a 200 ms stop must not fall between two samples), and the publishing
    # interval for analog tags. Set: this interval for every node of the source.
    sampling_interval_ms: int | None = Field(default=None, ge=0)
    # Changes one monitored item holds between two publishes; raised to the publishing
    # interval / the server's (revised) sampling interval where that is more.
    queue_size: int = Field(default=100, ge=1)
    security: OpcuaSecurity = OpcuaSecurity()
    credentials: Credentials | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # After a reconnect or an ingester restart, read the raw history (HistoryRead) of each
    # node the server historizes, from the last value taken (kept in ingest.state_dir) to
    # now, and send it ahead of the live values; at most this many values a node, and no
    # further back than this (beyond kpi.restate_horizon_s the KPI core refuses them).
    history_backfill: bool = True
    history_max_values: int = Field(default=10_000, ge=1)
    history_max_age_s: float = Field(default=3600.0, gt=0)
    machines: tuple[OpcuaMachine, ...] = Field(min_length=1)


# -- MQTT ----------------------------------------------------------------------------------


class MqttTls(_Model):
    ca: Path | None = None  # the broker's CA; the system's trust store when unset
    certificate: Path | None = None  # client certificate, for brokers that require one
    private_key: Path | None = None
    insecure: bool = False  # skip host name checks (a test broker's self-signed cert)


class MqttTopic(_Model):
    """A topic pattern with `{line}`, `{machine}` and `{signal}` placeholders; each stands
    for one topic level. `json` payloads are an object with `value` (and optionally `ts`,
    `reason`, `quality`) or a bare JSON value; `plain` payloads are the value as text."""

    pattern: str = Field(min_length=1)
    format: Literal["json", "plain"] = "json"

    @field_validator("pattern")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if "{machine}" not in value:
            raise ValueError("the pattern must contain {machine}")
        for level in value.split("/"):
            if "{" in level and level not in _PLACEHOLDERS:
                raise ValueError(f"a placeholder must fill a whole topic level, got {level!r}")
            if level in ("+", "#"):
                raise ValueError("use placeholders, not MQTT wildcards, in a pattern")
        return value

    def subscription(self) -> str:
        """The MQTT filter: each placeholder becomes a `+`."""
        return "/".join("+" if level in _PLACEHOLDERS else level for level in self.split())

    def split(self) -> list[str]:
        return self.pattern.split("/")


class Sparkplug(_Model):
    """Sparkplug B under `spBv1.0/<group>/...`. A device id is a machine id unless
    `devices` maps it (`edge/device: machine`); a metric name is a signal unless
    `metrics` maps it (`Production/Count: total_count`)."""

    group: str = Field(min_length=1)
    devices: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, str] = Field(default_factory=dict)
    # Ask an edge node for a rebirth (NCMD Node Control/Rebirth) on a gap or unknown alias.
    rebirth: bool = True


MqttVersion = Literal["5", "3.1.1"]


class MqttSource(_Model):
    id: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None  # default: linepulse-<source id>
    qos: Literal[0, 1, 2] = 1
    # MQTT v5 by default: its Receive Maximum is what bounds the inbox for QoS 1/2 (see
    # services/ingest/mqtt.py). A broker refusing v5 gets 3.1.1 with a warning; "3.1.1" here
    # skips the attempt. YAML reads `5` as a number: accepted too.
    mqtt_version: MqttVersion = "5"
    clean_start: bool = False  # a persistent session: QoS 1 messages wait for us
    # MQTT v5 ends a session at disconnect unless told how long to keep it; with clean_start
    # false it is kept this long (s) after we go away, so what is published meanwhile waits
    # for us. A day outlasts a night's outage or a maintenance window, yet a retired client
    # id does not hold the broker's memory for good (3.1.1 sessions never expire).
    # 4294967295 means never (MQTT 5 §3.1.2.11.2). Unused with clean_start or 3.1.1.
    session_expiry_s: int = Field(default=86_400, ge=0, le=0xFFFFFFFF)
    keepalive_s: int = Field(default=30, ge=5)
    credentials: Credentials | None = None
    tls: MqttTls | None = None
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Messages waiting between the socket and the decoder. QoS 1/2 ones are bounded by
    # MQTT v5's Receive Maximum (set to this, at most 65535; acknowledged only when taken),
    # under 3.1.1 only by the broker's in-flight window; QoS 0 ones past this are dropped
    # and counted. See services/ingest/mqtt.py.
    max_inbox_messages: int = Field(default=10_000, ge=1)
    topics: tuple[MqttTopic, ...] = ()
    sparkplug: Sparkplug | None = None
    # Machines this source carries (the simulator publishes these; the ingester accepts any
    # configured machine). For topics with {line}, the line must be the machine's.
    machines: tuple[str, ...] = ()

    @field_validator("mqtt_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # `mqtt_version: 5` in YAML is an int; 3.1.1 can only be text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _something_to_read(self) -> MqttSource:
        if not self.topics and self.sparkplug is None:
            raise ValueError("give topics, sparkplug or both")
        return self


class Sources(_Model):
    opcua: tuple[OpcuaSource, ...] = ()
    mqtt: tuple[MqttSource, ...] = ()

    def ids(self) -> list[str]:
        return [s.id for s in self.opcua] + [s.id for s in self.mqtt]


class IngestSettings(_Model):
    """The ingest service's Kafka side."""

    # Samples per Kafka record, and how long a partial batch may wait.
    batch_samples: int = Field(default=5_000, ge=1)
    linger_ms: int = Field(default=100, ge=0)
    # While the broker is away: this many samples in memory, then spill to disk.
    memory_samples: int = Field(default=100_000, ge=1)
    spool_dir: Path = Path("ingest/spool")  # relative: under the data dir (linepulse/data_dir.py)
    # What sources remember across restarts (Sparkplug B sessions: alias tables, seq).
    state_dir: Path = Path("ingest/state")  # relative: under the data dir
    spool_max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    # A payload larger than this goes to the DLQ unread.
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
