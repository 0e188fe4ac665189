// Write a sluice transform in JavaScript.
//
// A transform is a class: its config (described by `static config`, checked
// field by field, so a typo in the pipeline file is refused), a constructor
// that may refuse the config by throwing, and what becomes of one event:
//
//   import * as sluice from "./sluice-plugin.js";
//   const { t } = sluice;
//
//   class Check {
//     static name = "check";
//     static config = { require: t.list(t.string).default([]) };
//
//     constructor(config) {
//       this.require = config.require;
//     }
//
//     process(event) {
//       const body = event.object(); // an object, or the event is rejected as `malformed`
//       const missing = this.require.find((name) => !Object.hasOwn(body, name));
//       return missing === undefined ? sluice.keep() : sluice.reject("missing_property", missing, `\`${missing}\` is required`);
//     }
//   }
//
//   export const { init, process } = sluice.transform(Check);
//
// componentize-js builds it (`componentize-js app.js --wit wit -n transform
// -d http fetch-event -o app.wasm`); `sluice new plugin NAME --lang js` writes
// a project whose `build.sh` does that.
//
// What the SDK does for every plugin:
// - `init` reads the config and builds the class; a problem with the config
//   (`throw new sluice.ConfigError(message, "rules[0].window")`, or any other
//   exception) becomes the error `sluice validate` shows at the line of the
//   key at fault: "config `requir`: unknown field `requir`, expected
//   `require`".
// - `process` gives each event to the class's `process`. An exception thrown
//   there rejects that event alone, with the code `exception`, the error and
//   the line that threw it; `throw new sluice.Rejected(code, property,
//   message)` rejects it on purpose.
// - A batch before `init` is rejected event by event as `not_initialised`.
// - JSON read with `sluice.parse` (and `Event.object`) and written with
//   `sluice.stringify` (and `Event.withBody`) round-trips as the Rust plugins
//   do: keys sorted, `1.0` stays `1.0` (a `sluice.Float`), integers above
//   2^53 stay exact (a BigInt), floats in their shortest form, the clock's
//   nanoseconds (a BigInt) a plain number.
//
// The host's services are plain functions: `log`, `debug`, `info`, `warn`,
// `error`, `nowNs`, `nowMs`, `count`. Outside WebAssembly (a plain `node
// --test`) they talk to `testing` instead, which sets the clock and keeps
// what was logged and counted.

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

// --- Events and outcomes ---------------------------------------------------

/** One event: its subject, headers in order, and body (bytes). */
export class Event {
  constructor(subject, body, headers = []) {
    this.subject = subject;
    this.headers = headers;
    this.body = body instanceof Uint8Array ? body : stringify(body);
  }

  /** The body as a JSON object, or throws `Rejected("malformed", ...)`. */
  object() {
    let value;
    try {
      value = parse(this.body);
    } catch (e) {
      throw new Rejected("malformed", undefined, `body is not valid JSON: ${e.message}`);
    }
    if (kind(value) !== "an object") {
      throw new Rejected("malformed", undefined, `expected a JSON object, found ${kind(value)}`);
    }
    return value;
  }

  /** The same event with another body (a JSON value or bytes), on the same
   * subject unless another is given. */
  withBody(body, subject = this.subject) {
    return new Event(subject, body, this.headers);
  }

  /** The first value of a header, if the event has it. */
  header(name) {
    const found = this.headers.find(([k]) => k === name);
    return found === undefined ? undefined : found[1];
  }
}

export const keep = () => ({ tag: "keep" });
export const reroute = (subject) => ({ tag: "reroute", val: subject });
export const replace = (...events) => ({ tag: "replace", val: events });
export const drop = (reason) => ({ tag: "drop", val: reason });
export const reject = (code, property, message) => ({ tag: "reject", val: { code, property: property ?? undefined, message } });

/** Thrown from `process` (or anything it calls) to reject the event. */
export class Rejected extends Error {
  constructor(code, property, message) {
    super(message);
    this.outcome = reject(code, property, message);
  }
}

// --- JSON as the Rust plugins read and write it ----------------------------

/** A number that is a float although its value is whole: `1.0`, `1e20`. */
export class Float {
  constructor(value) {
    this.value = Number(value);
  }
  valueOf() {
    return this.value;
  }
  toString() {
    return formatFloat(this.value);
  }
}

/** `value` as a float in JSON, even when it is whole. */
export const float = (value) => new Float(value);

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;
// Plain JSON.parse reads a number exactly, and as the Rust plugins do,
// unless it is a whole float (`1.0`, `1e5`, `-0`) or an integer of 16
// digits or more. A body with neither after `:`, `,` or `[` (a number's place; the
// test may also hit a string, which only costs the slower path) skips the
// reviver, which costs a call per value.
const NEEDS_CARE = /[:,[]\s*(?:-0(?![.0-9eE])|-?(?:\d+\.0+(?![0-9])|\d+(?:\.\d+)?[eE]|\d{16}))/;

/** A JSON document (bytes or text), read as the host and the Rust plugins
 * read it. */
export function parse(body) {
  const text = typeof body === "string" ? body : decode(body);
  if (!NEEDS_CARE.test(text)) {
    return JSON.parse(text);
  }
  if (SOURCE_TEXT) {
    return JSON.parse(text, (key, value, context) => (typeof value === "number" ? number(context.source, value) : value));
  }
  JSON.parse(text); // the engine's own message for a broken document
  return new Reader(text).document();
}

// Whether this engine hands a reviver each number's source text.
const SOURCE_TEXT = (() => {
  try {
    return JSON.parse("1.0", (key, value, context) => context?.source) === "1.0";
  } catch {
    return false;
  }
})();

/** A JSON reader for engines without source text: only numbers need it. */
class Reader {
  constructor(text) {
    this.text = text;
    this.at = 0;
  }

  document() {
    const value = this.value();
    this.space();
    return value;
  }

  space() {
    while (" \t\n\r".includes(this.text[this.at] ?? "x")) this.at++;
  }

  value() {
    this.space();
    const c = this.text[this.at];
    if (c === "{") {
      this.at++;
      const object = {};
      this.space();
      if (this.text[this.at] === "}") {
        this.at++;
        return object;
      }
      for (;;) {
        this.space();
        const key = this.string();
        this.space();
        this.at++; // ':'
        Object.defineProperty(object, key, { value: this.value(), enumerable: true, writable: true, configurable: true });
        this.space();
        if (this.text[this.at++] === "}") return object;
      }
    }
    if (c === "[") {
      this.at++;
      const array = [];
      this.space();
      if (this.text[this.at] === "]") {
        this.at++;
        return array;
      }
      for (;;) {
        array.push(this.value());
        this.space();
        if (this.text[this.at++] === "]") return array;
      }
    }
    if (c === '"') return this.string();
    const literal = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(this.text.slice(this.at, this.at + 400))[0];
    this.at += literal.length;
    if (literal === "true") return true;
    if (literal === "false") return false;
    if (literal === "null") return null;
    return number(literal, Number(literal));
  }

  string() {
    const start = this.at;
    this.at++;
    while (this.text[this.at] !== '"') this.at += this.text[this.at] === "\\" ? 2 : 1;
    this.at++;
    return JSON.parse(this.text.slice(start, this.at));
  }
}

function decode(bytes) {
  try {
    return decoder.decode(bytes);
  } catch {
    throw new SyntaxError("the body is not UTF-8");
  }
}

function number(source, value) {
  // serde_json reads `-0` as the float -0.0.
  if (/[.eE]/.test(source) || Object.is(value, -0)) {
    return Number.isInteger(value) ? new Float(value) : value;
  }
  if (Number.isSafeInteger(value)) {
    return value;
  }
  const exact = BigInt(source);
  return exact >= I64_MIN && exact <= U64_MAX ? exact : new Float(value);
}

/** Compact JSON bytes, as serde_json writes them: keys sorted, no spaces,
 * floats in their shortest form, non-finite numbers as `null`. */
export function stringify(value) {
  const out = [];
  write(value, out);
  return encoder.encode(out.join(""));
}

function write(value, out) {
  switch (typeof value) {
    case "string":
      out.push(JSON.stringify(value));
      return;
    case "number":
      out.push(Number.isInteger(value) && Math.abs(value) < 2 ** 64 ? integer(value) : formatFloat(value));
      return;
    case "bigint":
      out.push(value >= I64_MIN && value <= U64_MAX ? value.toString() : formatFloat(Number(value)));
      return;
    case "boolean":
      out.push(value ? "true" : "false");
      return;
    case "object":
      break;
    default:
      throw new TypeError(`${typeof value} is not a JSON value`);
  }
  if (value === null) {
    out.push("null");
  } else if (value instanceof Float) {
    out.push(formatFloat(value.value));
  } else if (Array.isArray(value)) {
    out.push("[");
    value.forEach((item, i) => {
      if (i) out.push(",");
      write(item === undefined ? null : item, out);
    });
    out.push("]");
  } else {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined);
    keys.sort();
    if (keys.some((k) => SURROGATE.test(k))) keys.sort(byCodePoint);
    out.push("{");
    keys.forEach((key, i) => {
      if (i) out.push(",");
      out.push(JSON.stringify(key), ":");
      write(value[key], out);
    });
    out.push("}");
  }
}

// Rust orders keys by their UTF-8 bytes, which is code point order; the
// default sort compares UTF-16 units, which differs only for keys with
// characters past U+FFFF (surrogate pairs).
const SURROGATE = /[\uD800-\uDFFF]/;
function byCodePoint(a, b) {
  if (a === b) return 0;
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
  }
  return x.length - y.length;
}

function integer(value) {
  // A whole number beyond 2^53 prints exactly as the float it is.
  return Number.isSafeInteger(value) ? String(value) : BigInt(value).toString();
}

/** A float as serde_json writes it: the shortest digits that read back the
 * same, fixed between 1e-5 and 1e16, otherwise `d.ddde±x`. */
export function formatFloat(value) {
  if (!Number.isFinite(value)) return "null";
  const sign = value < 0 || Object.is(value, -0) ? "-" : "";
  if (value === 0) return sign + "0.0";
  // JavaScript's shortest form as digits and an exponent: d.ddd * 10^e.
  const [mantissa, exponent] = Math.abs(value).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const e = Number(exponent);
  if (e >= -5 && e <= 15) {
    if (digits.length - 1 <= e) return sign + digits + "0".repeat(e + 1 - digits.length) + ".0";
    if (e >= 0) return sign + digits.slice(0, e + 1) + "." + digits.slice(e + 1);
    return sign + "0." + "0".repeat(-e - 1) + digits;
  }
  const rest = digits.length > 1 ? "." + digits.slice(1) : "";
  return `${sign}${digits[0]}${rest}e${e >= 0 ? "+" : "-"}${Math.abs(e)}`;
}

/** What a JSON value is, for messages: "a string", "an object"... */
export function kind(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return "a boolean";
  if (typeof value === "number" || typeof value === "bigint" || value instanceof Float) return "a number";
  if (typeof value === "string") return "a string";
  if (Array.isArray(value)) return "an array";
  return "an object";
}

// --- The host's services ---------------------------------------------------

// Under node the host is this in-memory one (`sluice-testing.js` reads and
// sets it); in the component, `sluice-component.js` puts the host's imports
// in its place before the plugin's module runs.
export const memoryHost = {
  clockNs: 0n,
  logged: [],
  counters: new Map(),
  log(level, message, fields) {
    this.logged.push({ level, message, fields: Object.fromEntries(fields) });
  },
  now() {
    return this.clockNs;
  },
  count(name, delta) {
    this.counters.set(name, (this.counters.get(name) ?? 0n) + delta);
  },
};

let host = memoryHost;

/** Called by `sluice-component.js`; not for plugins. */
export function useHost(services) {
  host = services;
}

/** A line in the host's log, tagged with the pipeline and stage; the fields'
 * values are written as strings. */
export function log(level, message, fields = {}) {
  host.log(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
}
export const debug = (message, fields) => log("debug", message, fields);
export const info = (message, fields) => log("info", message, fields);
export const warn = (message, fields) => log("warn", message, fields);
export const error = (message, fields) => log("error", message, fields);

/** Nanoseconds since the Unix epoch, on the host's clock (a BigInt). */
export const nowNs = () => host.now();
/** Milliseconds since the Unix epoch, on the host's clock. */
export const nowMs = () => Number(host.now() / 1000000n);
/** Adds to a named counter the host sums per pipeline and stage. */
export const count = (name, delta = 1) => host.count(name, BigInt(delta));

// --- Config ----------------------------------------------------------------

/** Readers for a config's fields: `t.list(t.string).default([])`. */
export const t = {
  string: reader("a string", (v) => typeof v === "string"),
  boolean: reader("a boolean", (v) => typeof v === "boolean"),
  number: reader("a number", (v) => typeof v === "number" || typeof v === "bigint" || v instanceof Float, Number),
  integer: reader("an integer", (v) => (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint"),
  any: reader("a value", () => true),
  list: (item) =>
    reader("a list", Array.isArray, (v, path) => v.map((x, i) => item.read(x, [...path, String(i)]))),
  table: (item) =>
    reader("a table", (v) => kind(v) === "an object", (v, path) =>
      Object.fromEntries(Object.entries(v).map(([k, x]) => [k, item.read(x, [...path, k])])),
    ),
  /** A table with these fields, unknown ones refused. */
  fields: (fields) => reader("a table", (v) => kind(v) === "an object", (v, path) => readFields(fields, v, path)),
};

function reader(expected, fits, build = (v) => v) {
  const made = {
    required: true,
    read(value, path) {
      if (!fits(value)) throw new ConfigError(`expected ${expected}, found ${kind(value)}`, path);
      return build(value, path);
    },
    /** The field may be left out; it then takes this value. */
    default(value) {
      return { ...made, required: false, fallback: value };
    },
  };
  return made;
}

/** Thrown from a plugin's constructor to refuse its config: `at` says where
 * (`"rules[0].window"`: keys joined by `.`, list items by `[index]`, or a
 * list of keys), or nothing for the config as a whole. `problems` holds
 * `{ path, message }` records, the path a list of keys. */
export class ConfigError extends Error {
  constructor(message, at = []) {
    super(message);
    this.name = "ConfigError";
    this.problems = [{ path: Array.isArray(at) ? at : parsePath(at), message }];
    this.message = this.toString();
  }

  /** The same problems, found in the part of a larger config at `at`. */
  within(at) {
    const prefix = parsePath(at);
    this.problems = this.problems.map(({ path, message }) => ({ path: [...prefix, ...path], message }));
    this.message = this.toString();
    return this;
  }

  toString() {
    return this.problems.map(({ path, message }) => (path.length ? `\`${writtenPath(path)}\`: ${message}` : message)).join("; ");
  }
}

function parsePath(at) {
  const path = [];
  const part = /\["((?:[^"\\]|\\.)*)"\]|\[(\d+)\]|([^.[]+)/g;
  for (const [, quoted, index, key] of at.matchAll(part)) path.push(quoted !== undefined ? JSON.parse(`"${quoted}"`) : (index ?? key));
  return path;
}

function writtenPath(path) {
  let text = "";
  for (const key of path) {
    if (/^\d+$/.test(key)) text += `[${key}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(key)) text += text ? `.${key}` : key;
    else text += `[${JSON.stringify(key)}]`;
  }
  return text;
}

function readFields(fields, value, path) {
  const unknown = Object.keys(value).find((k) => !Object.hasOwn(fields, k));
  if (unknown !== undefined) {
    const known = Object.keys(fields).map((k) => `\`${k}\``);
    throw new ConfigError(`unknown field \`${unknown}\`, expected ${known.length ? known.join(" or ") : "no fields"}`, [...path, unknown]);
  }
  const read = {};
  for (const [name, field] of Object.entries(fields)) {
    const where = [...path, name];
    if (Object.hasOwn(value, name)) {
      read[name] = field.read(value[name], where);
    } else if (field.required) {
      throw new ConfigError(`missing field \`${name}\``, path);
    } else {
      read[name] = structuredClone(field.fallback);
    }
  }
  return read;
}

// --- Transforms ------------------------------------------------------------

/** An exception as one line: its type, message and where it was thrown,
 * from the stack as V8 (`at f (file:1:2)`) or SpiderMonkey (`f@file:1:2`)
 * writes it. */
export function describe(e) {
  if (!(e instanceof Error)) return `thrown: ${String(e)}`;
  let text = e.message ? `${e.name}: ${e.message}` : e.name;
  const place = String(e.stack ?? "")
    .split("\n")
    .map((line) => line.trim())
    .map((line) => /^at (?:(.+?) \()?(.+?)\)?$/.exec(line) ?? /^(.*?)@(.+)$/.exec(line))
    .find((frame) => frame && /:\d+/.test(frame[2]) && !frame[2].includes("sluice-plugin.js"));
  if (place) {
    const [, name, location] = place;
    text += ` (at ${location.replace(/^.*\//, "")}${name ? ` in ${name}` : ""})`;
  }
  return text;
}

/** The plugin built from its config (parsed JSON), or a ConfigError saying
 * what is wrong with it, and where. */
export function build(Plugin, config) {
  const read = Plugin.config === undefined ? config : t.fields(Plugin.config).read(config, []);
  try {
    return new Plugin(read);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(e instanceof Error ? e.message || describe(e) : String(e));
  }
}

const OUTCOMES = new Set(["keep", "reroute", "replace", "drop", "reject"]);

/** One event through the plugin: an exception rejects that event alone. */
export function guarded(plugin, event) {
  let outcome;
  try {
    outcome = plugin.process(event);
  } catch (e) {
    return e instanceof Rejected ? e.outcome : reject("exception", undefined, describe(e));
  }
  const wrong = wrongOutcome(outcome);
  if (wrong) {
    return reject("exception", undefined, `TypeError: ${plugin.constructor.name}.process returned ${wrong}`);
  }
  return outcome;
}

/** What is wrong with an outcome the host could not take, if anything. */
function wrongOutcome(outcome) {
  if (outcome === null || typeof outcome !== "object" || !OUTCOMES.has(outcome.tag)) return `${kind(outcome)}, not an outcome`;
  const { tag, val } = outcome;
  if ((tag === "reroute" || tag === "drop") && typeof val !== "string") return `${tag}(${kind(val)}), not a string`;
  if (tag === "replace" && !(Array.isArray(val) && val.every((e) => e instanceof Event && typeof e.subject === "string"))) {
    return "replace(...) with something that is not an Event";
  }
  if (tag === "reject" && !(typeof val.code === "string" && typeof val.message === "string" && (val.property === undefined || typeof val.property === "string"))) {
    return "reject(...) whose code, property or message is not a string";
  }
  return undefined;
}

/** One outcome per event, in order: the plugin's `processBatch` if it has
 * one, else `process` event by event. */
export function processBatch(plugin, batch) {
  if (typeof plugin.processBatch === "function") {
    return plugin.processBatch(batch);
  }
  return batch.map((event) => guarded(plugin, event));
}

/** The functions componentize-js exports as the `transform` world:
 * `export const { init, process } = sluice.transform(MyStage);` */
export function transform(Plugin) {
  let built;
  return {
    init(config) {
      try {
        built = build(Plugin, parse(config));
      } catch (e) {
        // componentize-js turns a thrown value into the error result.
        throw e instanceof ConfigError ? e.problems : [{ path: [], message: describe(e) }];
      }
    },
    process(batch) {
      if (built === undefined) {
        return batch.map(() => reject("not_initialised", undefined, `the ${Plugin.name} stage was not initialised`));
      }
      // The bindings hand over each body as an array-like of bytes.
      const events = batch.map((e) => new Event(e.subject, e.body instanceof Uint8Array ? e.body : new Uint8Array(e.body), e.headers));
      let outcomes;
      try {
        outcomes = processBatch(built, events);
      } catch (e) {
        outcomes = events.map(() => reject("exception", undefined, describe(e)));
      }
      if (!Array.isArray(outcomes) || outcomes.length !== events.length) {
        const message = `${Plugin.name}.processBatch gave ${outcomes?.length} outcomes for ${events.length} events`;
        outcomes = events.map(() => reject("exception", undefined, message));
      }
      return outcomes;
    },
  };
}

// --- Sinks -------------------------------------------------------------------

/** A stateful last stage that emits events of its own, such as alerts.
 * Extend it: set `static name`, optionally `static config` (as a
 * transform's), `static state()` (a new state: a plain object), and define
 * `constructor(config)`, `consume(state, batch)` and, if time matters,
 * `tick(state, nowNs)`; both change `state` in place and return the events
 * they cause.
 *
 * The state is kept by the SDK as JSON: the host stores it after every batch
 * and tick, hands it to the next version on a hot swap and back after a
 * restart. A kept state is read over a new one, so fields added to
 * `state()` get their defaults in an older state; for a change an older
 * state would not read as, raise `static stateVersion` and turn the older
 * forms into the new one in `static upgrade(version, kept)`. A state kept
 * by a newer build (a higher version) is refused. An exception in `consume`
 * or `tick` traps: the host starts the sink again from its last state, and
 * the error is in the log and the dead letter. */
export class Sink {
  static stateVersion = 1;

  static state() {
    return {};
  }

  static upgrade(version, kept) {
    return kept;
  }

  tick(state, nowNs) {
    return [];
  }

  restored(state) {
    return state;
  }
}

/** The state as the host keeps it: version 1 as the bare JSON of the state,
 * a later one as `{"sluice_state_version": N, "state": ...}`, as the Rust SDK
 * keeps it. */
export function keepState(Plugin, state) {
  const version = Plugin.stateVersion ?? 1;
  return stringify(version === 1 ? state : { sluice_state_version: version, state });
}

/** A kept state as this build's, upgraded from an older version; an Error
 * saying why it cannot be. */
export function readState(Plugin, kept) {
  const current = Plugin.stateVersion ?? 1;
  let value = parse(kept);
  let version = 1;
  if (kind(value) === "an object" && Object.keys(value).sort().join() === "sluice_state_version,state") {
    ({ sluice_state_version: version, state: value } = value);
    version = Number(version);
  }
  if (version > current) {
    throw new Error(`cannot restore the ${Plugin.name} state: it was kept at version ${version} by a newer build, and this one is version ${current}`);
  }
  if (version < current) value = Plugin.upgrade(version, value);
  if (kind(value) !== "an object") throw new Error(`cannot restore the ${Plugin.name} state: expected an object, found ${kind(value)}`);
  return { ...Plugin.state(), ...value };
}

function emitted(plugin, events, call) {
  if (!Array.isArray(events) || !events.every((e) => e instanceof Event && typeof e.subject === "string")) {
    throw new TypeError(`${plugin.constructor.name}.${call} must return an array of Events, not ${kind(events)}`);
  }
  return events;
}

/** A sink built from its config (parsed JSON) with a new state, or a
 * ConfigError. */
export function newSink(Plugin, config) {
  return { plugin: build(Plugin, config), state: Plugin.state() };
}

/** The functions componentize-js exports as the `sink` world:
 * `export const { init, consume, tick, snapshot, restore } = sluice.sink(MySink);` */
export function sink(Plugin) {
  let slot;
  const ready = () => {
    if (slot === undefined) error(`the ${Plugin.name} stage was not initialised`);
    return slot;
  };
  return {
    init(config) {
      try {
        slot = newSink(Plugin, parse(config));
      } catch (e) {
        throw e instanceof ConfigError ? e.problems : [{ path: [], message: describe(e) }];
      }
    },
    consume(batch) {
      const s = ready();
      if (s === undefined) return [];
      const events = batch.map((e) => new Event(e.subject, e.body instanceof Uint8Array ? e.body : new Uint8Array(e.body), e.headers));
      return emitted(s.plugin, s.plugin.consume(s.state, events), "consume");
    },
    tick(now) {
      const s = ready();
      return s === undefined ? [] : emitted(s.plugin, s.plugin.tick(s.state, BigInt(now)), "tick");
    },
    snapshot() {
      const s = ready();
      return s === undefined ? new Uint8Array() : keepState(Plugin, s.state);
    },
    restore(kept) {
      const s = ready();
      if (s === undefined) throw `the ${Plugin.name} stage was not initialised`;
      try {
        s.state = s.plugin.restored(readState(Plugin, kept instanceof Uint8Array ? kept : new Uint8Array(kept)));
      } catch (e) {
        throw e instanceof Error ? e.message : String(e);
      }
    },
  };
}
