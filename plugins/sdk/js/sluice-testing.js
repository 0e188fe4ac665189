// Run a plugin under a plain `node --test`, without WebAssembly or NATS: the
// host's clock is set here, and what the plugin logs and counts is kept here.
//
//   import { test } from "node:test";
//   import assert from "node:assert/strict";
//   import * as sluice from "./sluice-plugin.js";
//   import * as testing from "./sluice-testing.js";
//   import { Check } from "./app.js";
//
//   test("refuses an event without a name", () => {
//     const check = testing.harness(Check, { require: ["event"] });
//     assert.deepEqual(check.process(testing.event("in.web", { plan: "free" })),
//       sluice.reject("missing_property", "event", "`event` is required"));
//   });
import { Event, build, keepState, memoryHost, newSink, parse, processBatch, readState } from "./sluice-plugin.js";

/** A plugin built as the host builds it (an Error with the message `sluice
 * validate` would show if the config is refused), whose events go through
 * the same per-event guard: an exception rejects its event. */
export function harness(Plugin, config) {
  const plugin = build(Plugin, config);
  return {
    plugin,
    process: (event) => processBatch(plugin, [event])[0],
    processBatch: (batch) => processBatch(plugin, batch),
  };
}

/** A sink built as the host builds it, its state kept as the host keeps it
 * (a ConfigError if the config is refused). */
export function sinkHarness(Plugin, config) {
  const slot = newSink(Plugin, config);
  return {
    get plugin() {
      return slot.plugin;
    },
    get state() {
      return slot.state;
    },
    consume: (batch) => slot.plugin.consume(slot.state, batch),
    /** Sets the clock to `nowNs` (a BigInt) and ticks, as the host does. */
    tick(nowNs) {
      setClock(BigInt(nowNs));
      return slot.plugin.tick(slot.state, BigInt(nowNs));
    },
    /** The state as the host would keep it. */
    snapshot: () => keepState(Plugin, slot.state),
    /** Takes over a kept state, as after a hot swap or a restart. */
    restore(kept) {
      slot.state = slot.plugin.restored(readState(Plugin, kept));
    },
  };
}

/** An event with a JSON body (or bytes, as they are). */
export const event = (subject, body, headers = []) => new Event(subject, body, headers);

/** An event's body, read as JSON. */
export const body = (event) => parse(event.body);

/** Sets the host's clock: an RFC 3339 time, or nanoseconds (a BigInt). */
export function setClock(at) {
  memoryHost.clockNs = typeof at === "bigint" ? at : BigInt(Date.parse(at)) * 1000000n;
}

/** What was logged since the last call, oldest first. */
export function takeLogged() {
  return memoryHost.logged.splice(0);
}

/** The counters, by name (BigInts). */
export const counters = () => Object.fromEntries(memoryHost.counters);

/** Clock at zero, nothing logged, nothing counted. */
export function reset() {
  memoryHost.clockNs = 0n;
  memoryHost.logged.length = 0;
  memoryHost.counters.clear();
}
