#!/usr/bin/env python3
"""The "insurance" participant: a Sagaflow participant written in Python.

It follows the wire contract of docs/participants.md without the Rust
participant library, to show that any language can take part in a saga:

- gRPC service ``sagaflow.test.v1.Insurance`` with the action ``Insure`` and
  the compensation ``CancelInsurance`` (each a ``StepCommand`` answered with a
  ``CommandAck``), ``sagaflow.participant.v1.CommandLog`` and gRPC health;
- one transaction per command: inbox claim, business decision, inbox answer
  and outbox row; a repeat re-emits the stored event under the same id;
- the ``outbox`` table, its indexes and NOTIFY trigger, as the outbox relay
  expects them, and the ``inbox`` table, in its own database.

Business rules: ``Insure`` (input ``{"traveller": "..."}``) sleeps first for a
traveller listed in ``slow_travellers``, refuses ``uninsurable: <traveller>``
for one listed in ``uninsurable``, and otherwise issues policy
``P-<first 8 hex digits of the saga id>`` (output ``{"policy": ...}``), or is
refused ``compensated_before_action`` when ``CancelInsurance`` came first and
left its tombstone. ``CancelInsurance`` always succeeds.

Settings (environment): SAGAFLOW_INSURANCE_DATABASE_URL (required), SAGAFLOW_INSURANCE_LISTEN
(127.0.0.1:50080), SAGAFLOW_TLS_CERT / SAGAFLOW_TLS_KEY /
SAGAFLOW_TLS_CLIENT_CA (PEM files; mutual TLS), SAGAFLOW_ALLOWED_CLIENT
(sagaflow-orchestrator), SAGAFLOW_INSECURE (false), SAGAFLOW_DB_POOL_SIZE
(16), SAGAFLOW_INBOX_RETENTION_SECS (1296000), SAGAFLOW_RETENTION_INTERVAL_SECS
(3600). See README.md beside this file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import unicodedata
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

PARTICIPANT = "insurance"
SERVICE = "sagaflow.test.v1.Insurance"
COMMAND_LOG_SERVICE = "sagaflow.participant.v1.CommandLog"
DEFAULT_LISTEN = "127.0.0.1:50080"
DEFAULT_CLIENT = "sagaflow-orchestrator"
COMPENSATED_BEFORE_ACTION = "compensated_before_action"
MAX_KEY_LEN = 200
MAX_OUTPUT_BYTES = 4096
MAX_LISTED_COMMANDS = 1000
SHUTDOWN_GRACE_SECS = 10
MIGRATION_LOCK_KEY = 0x5A6AF10E

log = logging.getLogger(PARTICIPANT)

# ---------------------------------------------------------------------------
# Generated protobuf modules
# ---------------------------------------------------------------------------

PROTO_ROOT = Path(__file__).resolve().parents[2] / "protos" / "proto"
# participant.proto imports events.proto and google/protobuf/timestamp.proto
# (the latter ships with grpc_tools).
PROTO_FILES = (
    "sagaflow/events/v1/events.proto",
    "sagaflow/participant/v1/participant.proto",
)


@dataclasses.dataclass(frozen=True)
class Stubs:
    events: Any  # sagaflow.events.v1 messages (EventEnvelope, enums)
    participant: Any  # sagaflow.participant.v1 messages


def load_stubs() -> Stubs:
    """Generate the Python modules of the two protos into a temporary
    directory and import them (the directory is removed once imported)."""
    import grpc_tools
    from grpc_tools import protoc

    bundled = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out = tempfile.mkdtemp(prefix="insurance-stubs-")
    try:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={bundled}",
            f"--python_out={out}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} under {PROTO_ROOT}")
        sys.path.insert(0, out)
        try:
            importlib.invalidate_caches()
            events = importlib.import_module("sagaflow.events.v1.events_pb2")
            participant = importlib.import_module("sagaflow.participant.v1.participant_pb2")
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return Stubs(events=events, participant=participant)


# ---------------------------------------------------------------------------
# Errors: the three kinds the orchestrator tells apart
# ---------------------------------------------------------------------------


class Invalid(Exception):
    """The command cannot be read: INVALID_ARGUMENT naming the field; nothing
    is written."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


class Internal(Exception):
    """A bug here (an output too large, a stored row without outcome):
    INTERNAL, nothing committed."""


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tls:
    cert: bytes
    key: bytes
    client_ca: bytes
    allowed_client: str


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    host: str
    port: int
    tls: Tls | None
    pool_size: int
    retention_secs: int
    retention_interval_secs: int


class ConfigError(Exception):
    pass


def _var(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _bool(name: str, default: bool) -> bool:
    value = _var(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name}={value!r} is invalid: must be true or false")


def _int(name: str, default: int, low: int, high: int) -> int:
    value = _var(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is invalid: not an integer") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}={number} is invalid: must be in {low}..={high}")
    return number


def _pem(name: str, path: str, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{name}={path}: cannot read: {e.strerror or e}") from None
    text = data.decode("utf-8", "replace")
    if not any(l.startswith("-----BEGIN ") and kind in l for l in text.splitlines()):
        raise ConfigError(f"{name}={path}: no PEM {kind} in it")
    return data


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"SAGAFLOW_INSURANCE_LISTEN={value!r} is invalid: must be host:port")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"SAGAFLOW_INSURANCE_LISTEN={value!r} is invalid: bad port")
    return host, number


def settings_from_env() -> Settings:
    url = _var("SAGAFLOW_INSURANCE_DATABASE_URL")
    if url is None:
        raise ConfigError("SAGAFLOW_INSURANCE_DATABASE_URL is required (postgres://user@host:port/dbname)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ConfigError(f"SAGAFLOW_INSURANCE_DATABASE_URL is invalid: {e}") from None
    if not params.get("dbname"):
        raise ConfigError("SAGAFLOW_INSURANCE_DATABASE_URL names no database")
    host, port = _listen(_var("SAGAFLOW_INSURANCE_LISTEN") or DEFAULT_LISTEN)

    tls = None
    if not _bool("SAGAFLOW_INSECURE", False):
        names = ("SAGAFLOW_TLS_CERT", "SAGAFLOW_TLS_KEY", "SAGAFLOW_TLS_CLIENT_CA")
        missing = [n for n in names if _var(n) is None]
        if missing:
            raise ConfigError(
                f"{PARTICIPANT} runs secure by default and these settings are missing: "
                f"{', '.join(missing)}. Set them to PEM files, or set SAGAFLOW_INSECURE=true "
                "to serve plaintext to anyone (local tests only)"
            )
        allowed = _var("SAGAFLOW_ALLOWED_CLIENT") or DEFAULT_CLIENT
        if len(allowed) > 253 or not re.fullmatch(r"[A-Za-z0-9.-]+", allowed):
            raise ConfigError(
                "SAGAFLOW_ALLOWED_CLIENT must be a DNS name "
                "(letters, digits, '-', '.'; at most 253 characters)"
            )
        tls = Tls(
            cert=_pem("SAGAFLOW_TLS_CERT", _var("SAGAFLOW_TLS_CERT"), "CERTIFICATE"),
            key=_pem("SAGAFLOW_TLS_KEY", _var("SAGAFLOW_TLS_KEY"), "PRIVATE KEY"),
            client_ca=_pem("SAGAFLOW_TLS_CLIENT_CA", _var("SAGAFLOW_TLS_CLIENT_CA"), "CERTIFICATE"),
            allowed_client=allowed.lower(),
        )
    return Settings(
        database_url=url,
        host=host,
        port=port,
        tls=tls,
        pool_size=_int("SAGAFLOW_DB_POOL_SIZE", 16, 1, 1000),
        retention_secs=_int("SAGAFLOW_INBOX_RETENTION_SECS", 1_296_000, 3600, 315_360_000),
        retention_interval_secs=_int("SAGAFLOW_RETENTION_INTERVAL_SECS", 3600, 1, 86_400),
    )


# ---------------------------------------------------------------------------
# Database: creation and migrations
# ---------------------------------------------------------------------------

MIGRATIONS: list[tuple[int, str, str]] = [
    # As common/src/outbox.rs: the table the outbox relay reads and updates.
    (
        1,
        "outbox",
        r"""
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    saga_id          uuid NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,
    traceparent      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    last_error       text
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
""",
    ),
    # As participants/kit/src/command/inbox.rs.
    (
        2,
        "inbox",
        r"""
CREATE TABLE inbox (
    command_id  uuid PRIMARY KEY,
    saga_id     uuid NOT NULL,
    step        integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('action', 'compensation')),
    -- Filled in by the claiming transaction before it commits.
    outcome     text CHECK (outcome IN ('SUCCEEDED', 'REFUSED')),
    reason      text,
    event_id    uuid,
    envelope    bytea,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_saga_id_idx ON inbox (saga_id);
""",
    ),
    # As participants/kit/src/retention.rs: what the retention sweep walks.
    (10, "inbox retention index", "CREATE INDEX inbox_received_at_idx ON inbox (received_at);"),
    # As common/src/outbox.rs (TUNING): a queue table's autovacuum.
    (
        11,
        "outbox autovacuum",
        r"""
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
""",
    ),
    # The business tables. A CANCELLED policy with no traveller is the
    # tombstone of a cancellation that came before the insurance.
    (
        100,
        "policies",
        r"""
CREATE TABLE policies (
    saga_id   uuid PRIMARY KEY,
    traveller text,
    policy    text,
    status    text NOT NULL CHECK (status IN ('INSURED', 'CANCELLED'))
);
CREATE TABLE uninsurable (traveller text PRIMARY KEY);
CREATE TABLE slow_travellers (traveller text PRIMARY KEY, ms integer NOT NULL);
""",
    ),
]


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def ensure_database(url: str) -> None:
    """Create the database the url names, if missing, through the `postgres`
    maintenance database of the same server."""
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("created database %s", name)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            pass  # created meanwhile by another process


def migrate(url: str) -> None:
    """Apply the migrations not yet recorded, in one transaction under an
    advisory lock: several processes starting together apply each once."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS python_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now()
                   )"""
            )
            done = {r[0] for r in conn.execute("SELECT version FROM python_migrations")}
            for version, name, text in MIGRATIONS:
                if version in done:
                    continue
                conn.execute(text)  # no parameters: several statements at once
                conn.execute(
                    "INSERT INTO python_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                log.info("applied migration %d (%s)", version, name)


def prepare_database(url: str, attempts: int = 10) -> None:
    """Create and migrate the database, waiting a little for the server."""
    for attempt in range(1, attempts + 1):
        try:
            ensure_database(url)
            migrate(url)
            return
        except psycopg.OperationalError as e:
            if attempt == attempts:
                raise
            log.warning("database %s not reachable yet (%s); retrying", redact(url), e)
            time.sleep(1)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

_HEX = "[0-9a-fA-F]"
_UUID_RE = re.compile(
    rf"(?:urn:uuid:)?({_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})"
    rf"|\{{({_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})\}}"
    rf"|({_HEX}{{32}})"
)


def parse_uuid(field: str, raw: str, *, allow_nil: bool = False) -> uuid.UUID:
    if not _UUID_RE.fullmatch(raw):
        raise Invalid(field, "not a UUID")
    value = uuid.UUID(raw)
    if value.int == 0 and not allow_nil:
        raise Invalid(field, "nil UUID")
    return value


def key(field: str, value: str) -> str:
    """A key-like string: at most 200 bytes, no control characters."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Invalid(field, "not valid UTF-8") from None
    if size > MAX_KEY_LEN:
        raise Invalid(field, f"longer than {MAX_KEY_LEN} bytes")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise Invalid(field, "contains control characters")
    return value


def new_event_id() -> uuid.UUID:
    """A version 7 UUID (time-ordered), as the contract prefers."""
    native = getattr(uuid, "uuid7", None)
    if native is not None:
        return native()
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclasses.dataclass(frozen=True)
class Command:
    command_id: uuid.UUID
    saga_id: uuid.UUID
    step: int
    step_name: str
    attempt: int
    saga_type: str
    input: bytes

    @staticmethod
    def parse(raw: Any) -> "Command":
        command_id = parse_uuid("command_id", raw.command_id)
        saga_id = parse_uuid("saga_id", raw.saga_id)
        if raw.step > 0x7FFFFFFF:  # the inbox's integer
            raise Invalid("step", "out of range")
        if not raw.step_name.strip():
            raise Invalid("step_name", "empty")
        key("step_name", raw.step_name)
        key("saga_type", raw.saga_type)
        return Command(
            command_id=command_id,
            saga_id=saga_id,
            step=raw.step,
            step_name=raw.step_name,
            attempt=raw.attempt,
            saga_type=raw.saga_type,
            input=bytes(raw.input),
        )

    def json(self) -> Any:
        try:
            # JSON text is UTF-8 (RFC 8259): no guessing of other encodings.
            return json.loads(self.input.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise Invalid("input", f"not the JSON this step takes: {e}") from None

    def field(self, name: str) -> Any:
        """Field `name` of the JSON object input; None when absent or null."""
        value = self.json()
        if not isinstance(value, dict):
            raise Invalid("input", "not a JSON object")
        return value.get(name)

    def text(self, name: str) -> str | None:
        value = self.field(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise Invalid(f"input.{name}", "not a string")
        return key(f"input.{name}", value)

    def required_text(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise Invalid(f"input.{name}", "missing")
        if not value.strip():
            raise Invalid(f"input.{name}", "empty")
        return value


@dataclasses.dataclass(frozen=True)
class Decision:
    succeeded: bool
    reason: str
    payload: dict
    output: dict | None = None

    @staticmethod
    def success(payload: dict, output: dict | None = None) -> "Decision":
        return Decision(True, "", payload, output)

    @staticmethod
    def refusal(reason: str, payload: dict) -> "Decision":
        return Decision(False, reason, payload)


def encode_output(output: Any) -> str:
    """A step output: a JSON object of at most 4096 bytes; its JSON text."""
    if output is None:
        return ""
    if not isinstance(output, dict):
        raise Internal("an output must be a JSON object")
    text = compact(output)
    size = len(text.encode("utf-8"))
    if size > MAX_OUTPUT_BYTES:
        raise Internal(
            f"{size} bytes, more than the {MAX_OUTPUT_BYTES} a step output may have"
        )
    return text


# ---------------------------------------------------------------------------
# Business decisions (inside the command's transaction, never committing)
# ---------------------------------------------------------------------------


def insure(conn: psycopg.Connection, cmd: Command) -> Decision:
    traveller = cmd.required_text("traveller")
    slow = conn.execute(
        "SELECT ms FROM slow_travellers WHERE traveller = %s", (traveller,)
    ).fetchone()
    if slow and slow[0] > 0:
        # After the claim, inside the transaction: a compensation may
        # overtake this action meanwhile.
        time.sleep(slow[0] / 1000)
    if conn.execute("SELECT 1 FROM uninsurable WHERE traveller = %s", (traveller,)).fetchone():
        return Decision.refusal(f"uninsurable: {traveller}", {"traveller": traveller})
    policy = "P-" + cmd.saga_id.hex[:8]
    inserted = conn.execute(
        """INSERT INTO policies (saga_id, traveller, policy, status)
           VALUES (%s, %s, %s, 'INSURED') ON CONFLICT (saga_id) DO NOTHING""",
        (cmd.saga_id, traveller, policy),
    ).rowcount
    if inserted == 1:
        return Decision.success({"status": "INSURED"}, {"policy": policy})
    # Lost the insert: re-read the winner, after the insert attempt, so that
    # a cancellation committed meanwhile is seen.
    status, existing = conn.execute(
        "SELECT status, policy FROM policies WHERE saga_id = %s FOR UPDATE", (cmd.saga_id,)
    ).fetchone()
    if status == "CANCELLED":
        return Decision.refusal(COMPENSATED_BEFORE_ACTION, {})
    return Decision.success({"status": "INSURED"}, {"policy": existing or policy})


def cancel_insurance(conn: psycopg.Connection, cmd: Command) -> Decision:
    # The input ({} or {"policy": ...}) is not needed: the saga id is the key.
    # A tombstone when it comes first, else the policy is cancelled.
    conn.execute(
        """INSERT INTO policies (saga_id, status) VALUES (%s, 'CANCELLED')
           ON CONFLICT (saga_id) DO UPDATE SET status = 'CANCELLED'""",
        (cmd.saga_id,),
    )
    return Decision.success({"status": "CANCELLED"})


# ---------------------------------------------------------------------------
# The gRPC services
# ---------------------------------------------------------------------------

_TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

Decide = Callable[[psycopg.Connection, Command], Decision]


def _aborting(context: grpc.ServicerContext, code: grpc.StatusCode, message: str):
    context.abort(code, message)  # raises


class Participant:
    def __init__(self, stubs: Stubs, pool: ConnectionPool, settings: Settings):
        self.ev = stubs.events
        self.pb = stubs.participant
        self.pool = pool
        self.allowed = settings.tls.allowed_client if settings.tls else None
        self.retention_secs = settings.retention_secs

    # -- the client identity pin ------------------------------------------

    def refusal(self, context: grpc.ServicerContext) -> str | None:
        """Why the caller may not call (None: it may)."""
        if self.allowed is None:
            return None
        auth = context.auth_context() or {}
        # Only DNS subjectAltNames count. gRPC's `x509_subject_alternative_name`
        # mixes every kind (DNS, URI, e-mail, IP): a URI SAN spelled
        # "sagaflow-orchestrator" must not pass. `peer_dns` has the DNS ones;
        # without it, take the mixed list less the names of the other kinds.
        if "peer_dns" in auth:
            raw = list(auth["peer_dns"])
        else:
            others = {
                n for k in ("peer_uri", "peer_email", "peer_ip") for n in auth.get(k, ())
            }
            raw = [n for n in auth.get("x509_subject_alternative_name", ()) if n not in others]
        names = [n.decode("utf-8", "replace") for n in raw]
        if any(n.lower() == self.allowed for n in names):
            return None
        if not auth.get("x509_pem_cert"):
            why = "the call came without a client certificate"
        elif not names:
            why = "the client certificate has no DNS subjectAltName"
        else:
            shown = [json.dumps(n[:64]) for n in names[:3]]
            if len(names) > 3:
                shown.append(f"and {len(names) - 3} more")
            why = f"the client certificate names {', '.join(shown)}"
        return f"client identity: {why}; only {self.allowed} may call this service"

    # -- step RPCs ----------------------------------------------------------

    def step(self, kind: str, method: str, decide: Decide):
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            return self.handle(kind, method, decide, request, context)

        return handler

    def handle(self, kind: str, method: str, decide: Decide, request: Any, context) -> Any:
        denied = self.refusal(context)
        if denied is not None:
            log.warning("call refused: %s", denied)
            _aborting(context, grpc.StatusCode.PERMISSION_DENIED, denied)
        try:
            cmd = Command.parse(request)
            ack = self.execute(kind, cmd, decide, self.traceparent(context))
            return ack
        except Invalid as e:
            log.info("%s: invalid command: %s", method, e)
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except (psycopg.Error, PoolTimeout, TooManyRequests) as e:
            log.warning("%s: transient failure: %s", method, e)
            code, message = grpc.StatusCode.UNAVAILABLE, f"database error: {e}"
        except Internal as e:
            log.error("%s: internal error: %s", method, e)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {e}"
        except Exception as e:  # a bug: answer, never crash the server
            log.exception("%s: unexpected failure", method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {e!r}"
        _aborting(context, code, message)

    @staticmethod
    def traceparent(context: grpc.ServicerContext) -> str | None:
        for item in context.invocation_metadata() or ():
            if item.key == "traceparent":
                value = item.value if isinstance(item.value, str) else ""
                value = value.strip().lower()
                return value if _TRACEPARENT_RE.fullmatch(value) else None
        return None

    def kind_enum(self, kind: str) -> int:
        if kind == "action":
            return self.ev.COMMAND_KIND_ACTION
        return self.ev.COMMAND_KIND_COMPENSATION

    def event_type(self, event: Any) -> str:
        kind = {
            self.ev.COMMAND_KIND_ACTION: "action",
            self.ev.COMMAND_KIND_COMPENSATION: "compensation",
        }.get(event.kind, "unspecified")
        outcome = {
            self.ev.OUTCOME_SUCCEEDED: "succeeded",
            self.ev.OUTCOME_REFUSED: "refused",
        }.get(event.outcome, "unspecified")
        return f"{event.participant}.{event.step_name}.{kind}.{outcome}"

    def ack(self, status: int, event_id: str, outcome: int, reason: str, output: str) -> Any:
        return self.pb.CommandAck(
            status=status, event_id=event_id, outcome=outcome, reason=reason, output=output
        )

    def execute(self, kind: str, cmd: Command, decide: Decide, traceparent: str | None) -> Any:
        with self.pool.connection() as conn, conn.transaction():
            claimed = conn.execute(
                """INSERT INTO inbox (command_id, saga_id, step, kind) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (command_id) DO NOTHING""",
                (cmd.command_id, cmd.saga_id, cmd.step, kind),
            ).rowcount
            if claimed != 1:
                return self.repeat(conn, kind, cmd, traceparent)

            decision = decide(conn, cmd)
            output = encode_output(decision.output)
            event_id = new_event_id()
            event = self.ev.EventEnvelope(
                event_id=str(event_id),
                saga_id=str(cmd.saga_id),
                step=cmd.step,
                step_name=cmd.step_name,
                kind=self.kind_enum(kind),
                command_id=str(cmd.command_id),
                outcome=(
                    self.ev.OUTCOME_SUCCEEDED if decision.succeeded else self.ev.OUTCOME_REFUSED
                ),
                reason=decision.reason,
                payload=compact(decision.payload).encode("utf-8"),
                participant=PARTICIPANT,
                output=output,
            )
            event.occurred_at.GetCurrentTime()
            encoded = event.SerializeToString()
            conn.execute(
                """UPDATE inbox SET outcome = %s, reason = %s, event_id = %s, envelope = %s
                   WHERE command_id = %s""",
                (
                    "SUCCEEDED" if decision.succeeded else "REFUSED",
                    decision.reason or None,
                    event_id,
                    encoded,
                    cmd.command_id,
                ),
            )
            conn.execute(
                """INSERT INTO outbox (event_id, saga_id, event_type, payload, traceparent)
                   VALUES (%s, %s, %s, %s, %s)""",
                (event_id, cmd.saga_id, self.event_type(event), encoded, traceparent),
            )
        log.debug("command %s: %s %s", cmd.command_id, self.event_type(event), event_id)
        return self.ack(
            self.pb.CommandAck.STATUS_ACCEPTED,
            event.event_id,
            event.outcome,
            event.reason,
            event.output,
        )

    def repeat(self, conn: psycopg.Connection, kind: str, cmd: Command, traceparent) -> Any:
        """A command id seen before: re-emit the stored event under the same
        event id and answer with the stored outcome."""
        saga_id, step, stored_kind, outcome, reason, event_id, envelope = conn.execute(
            """SELECT saga_id, step, kind, outcome, reason, event_id, envelope
               FROM inbox WHERE command_id = %s""",
            (cmd.command_id,),
        ).fetchone()
        if (saga_id, step, stored_kind) != (cmd.saga_id, cmd.step, kind):
            raise Invalid(
                "command_id",
                f"already used by the {stored_kind} of saga {saga_id} step {step}",
            )
        if outcome is None or event_id is None or envelope is None:
            raise Internal(f"inbox row {cmd.command_id} has no stored outcome")
        try:
            event = self.ev.EventEnvelope.FromString(bytes(envelope))
        except Exception as e:
            raise Internal(f"decoding the stored event of command {cmd.command_id}: {e}")
        conn.execute(
            """INSERT INTO outbox (event_id, saga_id, event_type, payload, traceparent)
               VALUES (%s, %s, %s, %s, %s)""",
            (event_id, cmd.saga_id, self.event_type(event), bytes(envelope), traceparent),
        )
        return self.ack(
            self.pb.CommandAck.STATUS_DUPLICATE,
            str(event_id),
            self.ev.OUTCOME_SUCCEEDED if outcome == "SUCCEEDED" else self.ev.OUTCOME_REFUSED,
            reason or "",
            event.output,
        )

    # -- CommandLog ---------------------------------------------------------

    def list_command_outcomes(self, request: Any, context: grpc.ServicerContext) -> Any:
        denied = self.refusal(context)
        if denied is not None:
            log.warning("call refused: %s", denied)
            _aborting(context, grpc.StatusCode.PERMISSION_DENIED, denied)
        raw = request.saga_id.strip()
        if not raw:
            _aborting(context, grpc.StatusCode.INVALID_ARGUMENT, "saga_id: required")
        try:
            saga_id = parse_uuid("saga_id", raw, allow_nil=True)
        except Invalid:
            shown = json.dumps(raw[:40], ensure_ascii=False)
            _aborting(context, grpc.StatusCode.INVALID_ARGUMENT, f"saga_id: not a UUID: {shown}")
        forgotten_before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(
            seconds=self.retention_secs
        )
        try:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    """SELECT command_id, step, kind, outcome, reason, event_id, envelope,
                              received_at
                       FROM inbox WHERE saga_id = %s AND outcome IS NOT NULL
                       ORDER BY received_at, command_id LIMIT %s""",
                    (saga_id, MAX_LISTED_COMMANDS),
                ).fetchall()
        except (psycopg.Error, PoolTimeout, TooManyRequests) as e:
            log.warning("ListCommandOutcomes: transient failure: %s", e)
            _aborting(context, grpc.StatusCode.UNAVAILABLE, f"database error: {e}")
        answer = self.pb.ListCommandOutcomesResponse()
        for command_id, step, kind, outcome, reason, event_id, envelope, received_at in rows:
            step_name = ""
            if envelope is not None:
                try:  # the step name lives in the stored event only
                    step_name = self.ev.EventEnvelope.FromString(bytes(envelope)).step_name
                except Exception:
                    pass
            item = answer.commands.add(
                command_id=str(command_id),
                step=max(step, 0),
                step_name=step_name,
                kind={
                    "action": self.ev.COMMAND_KIND_ACTION,
                    "compensation": self.ev.COMMAND_KIND_COMPENSATION,
                }.get(kind, self.ev.COMMAND_KIND_UNSPECIFIED),
                outcome={
                    "SUCCEEDED": self.ev.OUTCOME_SUCCEEDED,
                    "REFUSED": self.ev.OUTCOME_REFUSED,
                }.get(outcome, self.ev.OUTCOME_UNSPECIFIED),
                reason=reason or "",
                event_id=str(event_id) if event_id else "",
            )
            item.received_at.FromDatetime(_utc_naive(received_at))
        answer.forgotten_before.FromDatetime(_utc_naive(forgotten_before))
        return answer

    # -- wiring ---------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        step = self.pb.StepCommand
        ack = self.pb.CommandAck

        def unary(fn, request_type, response_type):
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        return [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Insure": unary(self.step("action", "Insure", insure), step, ack),
                    "CancelInsurance": unary(
                        self.step("compensation", "CancelInsurance", cancel_insurance), step, ack
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                COMMAND_LOG_SERVICE,
                {
                    "ListCommandOutcomes": unary(
                        self.list_command_outcomes,
                        self.pb.ListCommandOutcomesRequest,
                        self.pb.ListCommandOutcomesResponse,
                    )
                },
            ),
        ]


def _utc_naive(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment


# ---------------------------------------------------------------------------
# Inbox retention
# ---------------------------------------------------------------------------


def sweep_inbox(pool: ConnectionPool, retention_secs: int) -> int:
    """Delete inbox rows older than the retention, in batches; how many."""
    total = 0
    while True:
        with pool.connection() as conn:
            deleted = conn.execute(
                """DELETE FROM inbox WHERE command_id IN (
                       SELECT command_id FROM inbox
                       WHERE received_at < now() - %s * interval '1 second' LIMIT 5000)""",
                (retention_secs,),
            ).rowcount
        total += deleted
        if deleted < 5000:
            return total


def run_retention(pool: ConnectionPool, settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            deleted = sweep_inbox(pool, settings.retention_secs)
            if deleted:
                log.info("retention: %d old inbox rows deleted", deleted)
        except Exception as e:
            log.warning("inbox retention sweep failed; will retry: %s", e)
        stop.wait(settings.retention_interval_secs)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("SAGAFLOW_INSURANCE_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s insurance: %(message)s",
        stream=sys.stderr,
    )
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return 0
    try:
        settings = settings_from_env()
    except ConfigError as e:
        print(f"insurance: {e}", file=sys.stderr)
        return 2
    if settings.tls is None:
        log.warning(
            "SAGAFLOW_INSECURE=true: INSECURE MODE, plaintext gRPC and anyone may call; "
            "local tests only"
        )

    stubs = load_stubs()
    try:
        prepare_database(settings.database_url)
    except psycopg.Error as e:
        print(f"insurance: database {redact(settings.database_url)}: {e}", file=sys.stderr)
        return 1

    pool = ConnectionPool(
        settings.database_url,
        min_size=min(2, settings.pool_size),
        max_size=settings.pool_size,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        timeout=5.0,
        name="insurance",
        open=True,
    )
    participant = Participant(stubs, pool, settings)
    health_servicer = health.HealthServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.pool_size + 4),
        handlers=participant.handlers(),
        # Fail on a port in use instead of sharing it.
        options=[("grpc.so_reuseport", 0)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls.key, settings.tls.cert)],
                root_certificates=settings.tls.client_ca,
                require_client_auth=True,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        port = 0
        log.error("%s", e)
    if not port:
        print(f"insurance: cannot listen on {address}", file=sys.stderr)
        pool.close()
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Migrations are done: ready.
    for name in ("", SERVICE, COMMAND_LOG_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    retention = threading.Thread(
        target=run_retention, args=(pool, settings, stop), name="retention", daemon=True
    )
    retention.start()
    print(f"insurance listening on {settings.host}:{port}", flush=True)

    while not stop.wait(1.0):
        pass
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=SHUTDOWN_GRACE_SECS).wait()
    pool.close(timeout=2.0)
    log.info("stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # Handler threads cut off at the end of the grace period must not hold
    # the exit: their transactions die with the connections.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
