"""Write a sluice transform in Python.

A transform is a class: its config (a dataclass, checked field by field, so a
typo in the pipeline file is refused), a constructor that may refuse the
config by raising, and what becomes of one event::

    from dataclasses import dataclass, field
    import sluice_plugin as sluice

    @dataclass
    class Config:
        require: list[str] = field(default_factory=list)

    class Check(sluice.Transform):
        name = "check"
        Config = Config

        def __init__(self, config: Config):
            self.require = config.require

        def process(self, event: sluice.Event) -> sluice.Outcome:
            body = event.object()  # a dict, or the event is rejected as `malformed`
            for name in self.require:
                if name not in body:
                    return sluice.reject("missing_property", name, f"`{name}` is required")
            return sluice.keep()

    WitWorld = sluice.transform(Check)

componentize-py builds it (``componentize-py -d wit -w transform componentize
app -o app.wasm``); ``sluice new plugin NAME --lang python`` writes a project
whose ``build.sh`` does that.

What the SDK does for every plugin:

- ``init`` builds the config and the class; a problem with the config
  (``raise sluice.ConfigError(message, at="rules[0].window")``, or any other
  exception) becomes the error ``sluice validate`` shows at the line of the
  key at fault: ``config `requir`: unknown field `requir`, expected
  `require```.
- ``process`` gives each event to ``Transform.process``. An exception raised
  there rejects that event alone, with the code ``exception`` and the
  exception, its message and the line that raised it; ``raise
  sluice.Rejected(code, property, message)`` rejects it on purpose.
- A batch before ``init`` is rejected event by event as ``not_initialised``.
- JSON written with ``sluice.dumps`` (and ``Event.with_body``) reads as the
  Rust plugins write it: keys sorted, no spaces, ``1.0`` stays ``1.0``,
  integers of any size up to 64 bits exactly, floats in their shortest form.

The host's services are plain functions: ``log``/``debug``/``info``/``warn``/
``error``, ``now_ns``/``now_ms``, ``count``. Outside WebAssembly (a plain
``python3 -m unittest``) they talk to ``sluice_plugin.testing`` instead,
which sets the clock and keeps what was logged and counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import traceback
import typing
from typing import Any, Iterable

__all__ = [
    "Event",
    "Transform",
    "Rejected",
    "ConfigError",
    "Sink",
    "sink",
    "Keep",
    "Reroute",
    "Replace",
    "Drop",
    "Reject",
    "Outcome",
    "keep",
    "reroute",
    "replace",
    "drop",
    "reject",
    "loads",
    "dumps",
    "kind",
    "log",
    "debug",
    "info",
    "warn",
    "error",
    "now_ns",
    "now_ms",
    "count",
    "transform",
]

IN_WASM = sys.platform == "wasi"
_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


# --- Events and outcomes ---------------------------------------------------


class Event:
    """One event: the subject it came on (or is to go out on), its headers in
    order, and its body (bytes; a JSON object unless the pipeline's input
    takes any bytes)."""

    __slots__ = ("subject", "headers", "body")

    def __init__(self, subject: str, body: bytes | Any, headers: Iterable[tuple[str, str]] = ()):
        self.subject = subject
        self.headers = list(headers)
        self.body = body if isinstance(body, (bytes, bytearray)) else dumps(body)

    def object(self) -> dict:
        """The body as a JSON object, or ``Rejected("malformed", ...)``."""
        try:
            value = loads(self.body)
        except ValueError as e:
            raise Rejected("malformed", None, f"body is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise Rejected("malformed", None, f"expected a JSON object, found {kind(value)}")
        return value

    def with_body(self, body: bytes | Any, subject: str | None = None) -> Event:
        """The same event with another body (a JSON value or bytes), on the
        same subject unless another is given."""
        return Event(self.subject if subject is None else subject, body, self.headers)

    def header(self, name: str) -> str | None:
        """The first value of a header, if the event has it."""
        return next((v for k, v in self.headers if k == name), None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and (self.subject, self.headers, bytes(self.body)) == (other.subject, other.headers, bytes(other.body))

    def __repr__(self) -> str:
        return f"Event({self.subject!r}, {bytes(self.body)!r}, {self.headers!r})"


@dataclasses.dataclass(frozen=True)
class Keep:
    """Pass the event on unchanged: no bytes cross back to the host."""


@dataclasses.dataclass(frozen=True)
class Reroute:
    """Pass the event on unchanged, on this subject."""

    subject: str


@dataclasses.dataclass(frozen=True)
class Replace:
    """Pass these events on instead: none, one or several."""

    events: tuple[Event, ...]


@dataclasses.dataclass(frozen=True)
class Drop:
    """Discard the event on purpose; the reason is counted."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Reject:
    """Refuse the event: it goes to the dead-letter subject with the code,
    the property at fault if there is one, and a message for a person."""

    code: str
    property: str | None
    message: str


Outcome = typing.Union[Keep, Reroute, Replace, Drop, Reject]


def keep() -> Keep:
    return Keep()


def reroute(subject: str) -> Reroute:
    return Reroute(subject)


def replace(*events: Event) -> Replace:
    return Replace(tuple(events))


def drop(reason: str) -> Drop:
    return Drop(reason)


def reject(code: str, property: str | None, message: str) -> Reject:
    return Reject(code, property, message)


class ConfigError(ValueError):
    """Raised from a plugin's ``__init__`` to refuse its config: ``at`` says
    where (``"rules[0].window"``; keys joined by ``.``, list items by
    ``[index]``), or nothing for the config as a whole. ``problems`` holds
    ``(path, message)`` pairs, the path a list of keys."""

    def __init__(self, message: str, at: str | list[str] = ""):
        path = at if isinstance(at, list) else _parse_path(at)
        self.problems: list[tuple[list[str], str]] = [(path, message)]
        super().__init__(message)

    def within(self, at: str) -> ConfigError:
        """The same problems, found in the part of a larger config at ``at``."""
        prefix = _parse_path(at)
        self.problems = [(prefix + path, message) for path, message in self.problems]
        return self

    def __str__(self) -> str:
        return "; ".join(f"`{_written(path)}`: {message}" if path else message for path, message in self.problems)


def _parse_path(at: str) -> list[str]:
    path, rest = [], at
    while rest:
        if rest.startswith('["'):
            end = rest.find('"]', 2)
            end = len(rest) if end < 0 else end
            path.append(rest[2:end])
            rest = rest[end + 2 :]
        elif rest.startswith("["):
            end = rest.find("]")
            end = len(rest) if end < 0 else end
            path.append(rest[1:end])
            rest = rest[end + 1 :]
        else:
            ends = [i for i in (rest.find("."), rest.find("[")) if i >= 0]
            end = min(ends) if ends else len(rest)
            if end:
                path.append(rest[:end])
            rest = rest[end:]
        rest = rest[1:] if rest.startswith(".") else rest
    return path


def _written(path: list[str]) -> str:
    text = ""
    for key in path:
        if key.isdigit() and key.isascii():
            text += f"[{key}]"
        elif key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
            text += f".{key}" if text else key
        else:
            text += "[" + json.dumps(key) + "]"
    return text


class Rejected(Exception):
    """Raised from ``process`` (or anything it calls) to reject the event."""

    def __init__(self, code: str, property: str | None, message: str):
        super().__init__(message)
        self.outcome = Reject(code, property, message)


# --- JSON as the Rust plugins write it -----------------------------------

_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


def _integer(text: str) -> int | float:
    # As serde_json reads it: an integer that fits 64 bits stays exact, a
    # larger one becomes the nearest float.
    # `-0` reads as the float -0.0.
    value = int(text)
    if value == 0 and text.startswith("-"):
        return -0.0
    return value if _I64_MIN <= value <= _U64_MAX else float(text)


def loads(body: bytes | str) -> Any:
    """A JSON document, read as the host and the Rust plugins read it."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
    return json.loads(body, parse_int=_integer)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes, as serde_json writes them: keys sorted, no spaces,
    floats in their shortest form (``1.0``, ``1e+20``), non-finite floats as
    ``null``."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, int):
        out.append(str(int(value)) if _I64_MIN <= value <= _U64_MAX else _float(float(value)))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"a JSON object's keys are strings, not {type(key).__name__}")
            if i:
                out.append(",")
            out.append(_encode_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _float(value: float) -> str:
    """A float as serde_json writes it: the shortest digits that read back
    the same, fixed between 1e-5 and 1e16, otherwise `d.ddde±x`."""
    if not math.isfinite(value):
        return "null"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # value = 0.<digits> * 10^point, point counted from the first digit.
    point = len(whole.lstrip("0")) + (int(exponent) if exponent else 0)
    if not whole.lstrip("0"):
        point -= len(fraction) - len(fraction.lstrip("0"))
    digits = digits.rstrip("0")
    e = point - 1  # value = d.ddd * 10^e
    if -5 <= e <= 15:
        if len(digits) - 1 <= e:
            return sign + digits + "0" * (e + 1 - len(digits)) + ".0"
        if e >= 0:
            return sign + digits[: e + 1] + "." + digits[e + 1 :]
        return sign + "0." + "0" * (-e - 1) + digits
    rest = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{rest}e{'+' if e >= 0 else '-'}{abs(e)}"


def kind(value: Any) -> str:
    """What a JSON value is, for messages: `a string`, `an object`..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- The host's services ---------------------------------------------------

if IN_WASM:
    from wit_world.imports import clock as _clock  # type: ignore[import-not-found]
    from wit_world.imports import counters as _counters  # type: ignore[import-not-found]
    from wit_world.imports import log as _log  # type: ignore[import-not-found]

    _LEVELS = {"trace": _log.Level.TRACE, "debug": _log.Level.DEBUG, "info": _log.Level.INFO, "warn": _log.Level.WARN, "error": _log.Level.ERROR}

    def log(level: str, message: str, **fields: Any) -> None:
        """A line in the host's log, tagged with the pipeline and stage."""
        _log.log(_LEVELS.get(level, _log.Level.INFO), message, [(k, str(v)) for k, v in fields.items()])

    def now_ns() -> int:
        """Nanoseconds since the Unix epoch, on the host's clock."""
        return _clock.now()

    def count(name: str, delta: int = 1) -> None:
        """Adds to a named counter the host sums per pipeline and stage."""
        _counters.add(name, delta)

else:

    def log(level: str, message: str, **fields: Any) -> None:
        """A line in the host's log, tagged with the pipeline and stage."""
        from sluice_plugin import testing

        testing.logged.append(testing.Logged(level, message, {k: str(v) for k, v in fields.items()}))

    def now_ns() -> int:
        """Nanoseconds since the Unix epoch, on the host's clock."""
        from sluice_plugin import testing

        return testing.clock_ns

    def count(name: str, delta: int = 1) -> None:
        """Adds to a named counter the host sums per pipeline and stage."""
        from sluice_plugin import testing

        testing.counters[name] = testing.counters.get(name, 0) + delta


def debug(message: str, **fields: Any) -> None:
    log("debug", message, **fields)


def info(message: str, **fields: Any) -> None:
    log("info", message, **fields)


def warn(message: str, **fields: Any) -> None:
    log("warn", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("error", message, **fields)


def now_ms() -> int:
    """Milliseconds since the Unix epoch, on the host's clock."""
    return now_ns() // 1_000_000


# --- Transforms ------------------------------------------------------------


class Transform:
    """A stage that says what becomes of each event. Subclasses set ``name``
    (used in messages), optionally ``Config`` (a dataclass the stage's
    config table is read into; a plain ``dict`` without it), and define
    ``__init__(self, config)`` and ``process(self, event)``."""

    name = "plugin"
    Config: Any = dict

    def process(self, event: Event) -> Outcome:
        raise NotImplementedError

    def process_batch(self, batch: list[Event]) -> list[Outcome]:
        """One outcome per event, in order. Override it only to share work
        across a batch."""
        return [_guarded(self, event) for event in batch]


def _guarded(plugin: Transform, event: Event) -> Outcome:
    try:
        outcome = plugin.process(event)
    except Rejected as rejected:
        return rejected.outcome
    except Exception as e:  # one event's failure is that event's alone
        return Reject("exception", None, describe(e))
    wrong = _wrong(outcome)
    if wrong:
        return Reject("exception", None, f"TypeError: {type(plugin).__name__}.process returned {wrong}")
    return outcome


def _wrong(outcome: Any) -> str | None:
    """What is wrong with an outcome the host could not take, if anything."""
    if isinstance(outcome, Keep):
        return None
    if isinstance(outcome, Reroute):
        return None if isinstance(outcome.subject, str) else f"reroute({type(outcome.subject).__name__}), not a subject"
    if isinstance(outcome, Drop):
        return None if isinstance(outcome.reason, str) else f"drop({type(outcome.reason).__name__}), not a reason"
    if isinstance(outcome, Replace):
        bad = next((e for e in outcome.events if not isinstance(e, Event) or not isinstance(e.subject, str)), None)
        return None if bad is None else f"replace(...) with {type(bad).__name__}, not an Event"
    if isinstance(outcome, Reject):
        texts = (outcome.code, outcome.message) + (() if outcome.property is None else (outcome.property,))
        return None if all(isinstance(t, str) for t in texts) else "reject(...) whose code, property or message is not a string"
    return f"{type(outcome).__name__}, not an outcome"


def describe(e: BaseException) -> str:
    """An exception as one line: its type, message and the line of the
    plugin's code that raised it."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_HERE)]
    if frames:
        last = frames[-1]
        text += f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


def build(plugin: type[Transform], config: Any) -> Transform:
    """The plugin built from its config (parsed JSON), or ConfigError saying
    what is wrong with it, and where."""
    typed = read_config(plugin.Config, config, [])
    try:
        return plugin(typed)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(str(e) if str(e) else describe(e)) from None


def read_config(shape: Any, value: Any, path: list[str]) -> Any:
    """Checks ``value`` against a type (a dataclass, a builtin, ``list[T]``,
    ``dict[str, T]``, ``Optional[T]``, ``Any``) and builds it; ConfigError
    at the key of a value of the wrong shape."""
    if shape is Any or shape is object:
        return value
    if dataclasses.is_dataclass(shape):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, found {kind(value)}", path)
        fields = {f.name: f for f in dataclasses.fields(shape)}
        hints = typing.get_type_hints(shape)
        unknown = [k for k in value if k not in fields]
        if unknown:
            known = " or ".join(f"`{k}`" for k in fields) or "no fields"
            raise ConfigError(f"unknown field `{unknown[0]}`, expected {known}", path + [unknown[0]])
        given = {}
        for name, f in fields.items():
            if name in value:
                given[name] = read_config(hints.get(name, Any), value[name], path + [name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing field `{name}`", path)
        return shape(**given)
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return read_config(inner[0], value, path)
        return value
    if origin is list or shape is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, found {kind(value)}", path)
        item = args[0] if args else Any
        return [read_config(item, v, path + [str(i)]) for i, v in enumerate(value)]
    if origin is dict or shape is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, found {kind(value)}", path)
        item = args[1] if len(args) == 2 else Any
        return {k: read_config(item, v, path + [k]) for k, v in value.items()}
    expected = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    if shape in expected:
        fits = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
        if shape is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not fits:
            raise ConfigError(f"expected {expected[shape]}, found {kind(value)}", path)
        return value
    return value


def transform(plugin: type[Transform]) -> type:
    """The class componentize-py exports as the ``transform`` world: name it
    ``WitWorld`` in the app module (``WitWorld = sluice.transform(MyStage)``)."""

    class Exported:
        def init(self, config: str) -> None:
            try:
                built = build(plugin, loads(config))
            except ConfigError as e:
                raise _err(e.problems) from None
            except Exception as e:
                raise _err([([], describe(e))]) from None
            _instances[plugin] = built

        def process(self, batch: list) -> list:
            built = _instances.get(plugin)
            if built is None:
                return [_to_wit(Reject("not_initialised", None, f"the {plugin.name} stage was not initialised")) for _ in batch]
            events = [Event(e.subject, e.body, e.headers) for e in batch]
            try:
                outcomes = built.process_batch(events)
            except Exception as e:
                outcomes = [Reject("exception", None, describe(e))] * len(events)
            if len(outcomes) != len(events):
                message = f"{type(built).__name__}.process_batch gave {len(outcomes)} outcomes for {len(events)} events"
                outcomes = [Reject("exception", None, message)] * len(events)
            return [_to_wit(o) for o in outcomes]

    Exported.__name__ = Exported.__qualname__ = "WitWorld"
    return Exported


_instances: dict[type, Transform] = {}


# --- Sinks -------------------------------------------------------------------


class Sink:
    """A stateful last stage that emits events of its own, such as alerts.
    Subclasses set ``name``, optionally ``Config`` (as a transform's) and
    ``State`` (a dataclass whose fields all have defaults, or ``dict``), and
    define ``__init__(self, config)``, ``consume(self, state, batch)`` and,
    if time matters, ``tick(self, state, now_ns)``; both change ``state`` in
    place and return the events they cause.

    The state is kept by the SDK as JSON: the host stores it after every
    batch and tick, hands it to the next version on a hot swap and back
    after a restart. Fields added with defaults read in older states; for
    a change an older state would not read as, raise ``state_version`` and
    read the older forms in ``upgrade``. An exception in ``consume`` or
    ``tick`` traps: the host starts the sink again from its last state, and
    the traceback is in the log and the dead letter."""

    name = "plugin"
    Config: Any = dict
    State: Any = dict
    state_version = 1

    def consume(self, state: Any, batch: list[Event]) -> list[Event]:
        raise NotImplementedError

    def tick(self, state: Any, now_ns: int) -> list[Event]:
        return []

    @classmethod
    def upgrade(cls, version: int, kept: Any) -> Any:
        """An older build's state, kept at ``version``, as parsed JSON, in the
        form of this build's (returned as parsed JSON too). As it is unless
        overridden."""
        return kept

    def restored(self, state: Any) -> Any:
        """A kept state, read, before this build takes it over: check it or
        adapt it to the config. As it is unless overridden."""
        return state


def keep_state(plugin: type[Sink], state: Any) -> bytes:
    """The state as the host keeps it: version 1 as the bare JSON of the
    state, a later one as ``{"sluice_state_version": N, "state": ...}``,
    as the Rust SDK keeps it."""
    plain = _plain(state)
    if plugin.state_version != 1:
        plain = {"sluice_state_version": plugin.state_version, "state": plain}
    return dumps(plain)


def read_state(plugin: type[Sink], kept: bytes) -> Any:
    """A kept state as this build's ``State``, upgraded from an older version;
    ValueError saying why it cannot be."""
    value = loads(kept)
    version = 1
    if isinstance(value, dict) and set(value) == {"sluice_state_version", "state"}:
        version, value = value["sluice_state_version"], value["state"]
    if version < plugin.state_version:
        value = plugin.upgrade(version, value)
    try:
        return read_config(plugin.State, value, [])
    except ConfigError as e:
        newer = f"it was kept at version {version} by a newer build, and this one (version {plugin.state_version}) cannot read it: " if version > plugin.state_version else ""
        raise ValueError(f"cannot restore the {plugin.name} state: {newer}{e}") from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass
class _SinkSlot:
    plugin: Sink
    state: Any


def new_sink(plugin: type[Sink], config: Any) -> _SinkSlot:
    """The sink built from its config (parsed JSON) with a new state, or
    ConfigError."""
    built = build(plugin, config)
    return _SinkSlot(built, plugin.State())


def _emitted(plugin: Sink, events: Any, call: str) -> list[Event]:
    if not isinstance(events, list) or not all(isinstance(e, Event) and isinstance(e.subject, str) for e in events):
        raise TypeError(f"{type(plugin).__name__}.{call} must return a list of Events, not {type(events).__name__}")
    return events


def sink(plugin: type[Sink]) -> type:
    """The class componentize-py exports as the ``sink`` world: name it
    ``WitWorld`` in the app module (``WitWorld = sluice.sink(MySink)``)."""

    def slot() -> _SinkSlot | None:
        found = _sinks.get(plugin)
        if found is None:
            error(f"the {plugin.name} stage was not initialised")
        return found

    class Exported:
        def init(self, config: str) -> None:
            try:
                _sinks[plugin] = new_sink(plugin, loads(config))
            except ConfigError as e:
                raise _err(e.problems) from None
            except Exception as e:
                raise _err([([], describe(e))]) from None

        def consume(self, batch: list) -> list:
            s = slot()
            if s is None:
                return []
            events = [Event(e.subject, e.body, e.headers) for e in batch]
            return [_event_to_wit(e) for e in _emitted(s.plugin, s.plugin.consume(s.state, events), "consume")]

        def tick(self, now: int) -> list:
            s = slot()
            if s is None:
                return []
            return [_event_to_wit(e) for e in _emitted(s.plugin, s.plugin.tick(s.state, now), "tick")]

        def snapshot(self) -> bytes:
            s = slot()
            return b"" if s is None else keep_state(plugin, s.state)

        def restore(self, state: bytes) -> None:
            s = slot()
            if s is None:
                raise _err_text(f"the {plugin.name} stage was not initialised")
            try:
                s.state = s.plugin.restored(read_state(plugin, state))
            except Exception as e:
                raise _err_text(str(e) or describe(e)) from None

    Exported.__name__ = Exported.__qualname__ = "WitWorld"
    return Exported


_sinks: dict[type, _SinkSlot] = {}


def _err_text(message: str) -> Exception:
    from componentize_py_types import Err  # type: ignore[import-not-found]

    return Err(message)


def _event_to_wit(event: Event) -> Any:
    from wit_world.imports import types  # type: ignore[import-not-found]

    return types.Event(event.subject, list(event.headers), bytes(event.body))


def _err(problems: list[tuple[list[str], str]]) -> Exception:
    from componentize_py_types import Err  # type: ignore[import-not-found]
    from wit_world.imports import types  # type: ignore[import-not-found]

    return Err([types.ConfigProblem(list(path), message) for path, message in problems])


def _to_wit(outcome: Outcome) -> Any:
    from wit_world.imports import types  # type: ignore[import-not-found]

    if isinstance(outcome, Keep):
        return types.Outcome_Keep()
    if isinstance(outcome, Reroute):
        return types.Outcome_Reroute(outcome.subject)
    if isinstance(outcome, Replace):
        return types.Outcome_Replace([_event_to_wit(e) for e in outcome.events])
    if isinstance(outcome, Drop):
        return types.Outcome_Drop(outcome.reason)
    if isinstance(outcome, Reject):
        return types.Outcome_Reject(types.Rejection(outcome.code, outcome.property, outcome.message))
    return types.Outcome_Reject(types.Rejection("exception", None, f"TypeError: {type(outcome).__name__} is not an outcome"))
