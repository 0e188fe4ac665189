"""Run a plugin in a plain ``python3 -m unittest``, without WebAssembly or
NATS: the host's clock is set here, and what the plugin logs and counts is
kept here::

    from sluice_plugin import testing
    import app

    class CheckTest(unittest.TestCase):
        def setUp(self):
            testing.reset()

        def test_refuses_an_event_without_a_name(self):
            check = testing.Harness(app.Check, {"require": ["event"]})
            outcome = check.process(testing.event("in.web", {"plan": "free"}))
            self.assertEqual(outcome, sluice.reject("missing_property", "event", "`event` is required"))
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import sluice_plugin as sluice

clock_ns = 0
logged: list[Logged] = []
counters: dict[str, int] = {}


@dataclass
class Logged:
    level: str
    message: str
    fields: dict[str, str]


class Harness:
    """A plugin built as the host builds it (``sluice.ConfigError`` with the
    problems ``sluice validate`` would show if the config is refused), whose events
    go through the same per-event guard: an exception rejects its event."""

    def __init__(self, plugin: type[sluice.Transform], config: Any):
        self.plugin = sluice.build(plugin, config)

    def process(self, event: sluice.Event) -> sluice.Outcome:
        return self.process_batch([event])[0]

    def process_batch(self, batch: list[sluice.Event]) -> list[sluice.Outcome]:
        return self.plugin.process_batch(batch)


class SinkHarness:
    """A sink built as the host builds it, its state kept as the host keeps
    it (``sluice.ConfigError`` if the config is refused)."""

    def __init__(self, plugin: type[sluice.Sink], config: Any):
        self.kind = plugin
        self._slot = sluice.new_sink(plugin, config)

    @property
    def plugin(self) -> sluice.Sink:
        return self._slot.plugin

    @property
    def state(self) -> Any:
        return self._slot.state

    def consume(self, batch: list[sluice.Event]) -> list[sluice.Event]:
        return self.plugin.consume(self._slot.state, batch)

    def tick(self, now_ns: int) -> list[sluice.Event]:
        """Sets the clock to ``now_ns`` and ticks, as the host does."""
        set_clock(now_ns)
        return self.plugin.tick(self._slot.state, now_ns)

    def snapshot(self) -> bytes:
        """The state as the host would keep it."""
        return sluice.keep_state(self.kind, self._slot.state)

    def restore(self, kept: bytes) -> None:
        """Takes over a kept state, as after a hot swap or a restart
        (ValueError if it cannot be read)."""
        self._slot.state = self.plugin.restored(sluice.read_state(self.kind, kept))


def event(subject: str, body: Any, headers: list[tuple[str, str]] = ()) -> sluice.Event:
    """An event with a JSON body (or bytes, as they are)."""
    return sluice.Event(subject, body, headers)


def body(event: sluice.Event) -> Any:
    """An event's body, read as JSON."""
    return sluice.loads(event.body)


def set_clock(at: str | int) -> None:
    """Sets the host's clock: an RFC 3339 time or nanoseconds since the epoch."""
    global clock_ns
    if isinstance(at, int):
        clock_ns = at
    else:
        when = datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))
        clock_ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1_000


def take_logged() -> list[Logged]:
    """What was logged since the last call, oldest first."""
    taken = list(logged)
    logged.clear()
    return taken


def reset() -> None:
    """Clock at zero, nothing logged, nothing counted."""
    global clock_ns
    clock_ns = 0
    logged.clear()
    counters.clear()
