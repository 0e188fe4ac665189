import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import * as sluice from "../sdk/js/sluice-plugin.js";
import * as testing from "../sdk/js/sluice-testing.js";
import { Tag } from "./app.js";

const text = (event) => new TextDecoder().decode(event.body);

beforeEach(testing.reset);

test("sets properties and requires others", () => {
  const tag = testing.harness(Tag, { require: ["event"], set: { env: "demo" } });
  const { tag: kind, val: events } = tag.process(testing.event("in.a", { event: "a", env: "prod" }));
  assert.equal(kind, "replace");
  assert.equal(events[0].subject, "in.a");
  assert.deepEqual(testing.body(events[0]), { env: "demo", event: "a" });
  assert.deepEqual(tag.process(testing.event("in.a", { n: 1 })), sluice.reject("missing_property", "event", "required property `event` is absent"));
});

test("keeps an event it does not change and refuses a typo in its config", () => {
  const tag = testing.harness(Tag, { require: ["event"] });
  assert.deepEqual(tag.process(testing.event("in.a", { event: "a" })), sluice.keep());
  assert.throws(() => testing.harness(Tag, { requires: ["event"] }), {
    name: "ConfigError",
    problems: [{ path: ["requires"], message: "unknown field `requires`, expected `require` or `set`" }],
  });
  assert.throws(() => testing.harness(Tag, { require: ["event", 7] }), { message: "`require[1]`: expected a string, found a number" });
});

// The Rust and Python `tag` (plugins/tag, plugins/tag-py) assert the same bytes.
test("writes JSON as the Rust plugins do", () => {
  const tag = testing.harness(Tag, { set: { z: sluice.float(1) } });
  const body = '{"b":1.0,"a":18446744073709551615,"c":1e300,"d":0.00001,"e":"\\u00e9\\n","f":-0.0,"g":36893488147419103232,"h":[1.5,-3]}';
  const { val: [tagged] } = tag.process(new sluice.Event("in.a", new TextEncoder().encode(body)));
  assert.equal(text(tagged), '{"a":18446744073709551615,"b":1.0,"c":1e+300,"d":0.00001,"e":"é\\n","f":-0.0,"g":3.6893488147419103e+19,"h":[1.5,-3],"z":1.0}');
});

test("the clock's nanoseconds go out as a number", () => {
  testing.setClock("2026-11-23T00:00:01Z");
  assert.equal(new TextDecoder().decode(sluice.stringify({ at: sluice.nowNs(), ms: sluice.nowMs() })), '{"at":1795392001000000000,"ms":1795392001000}');
});

test("an exception rejects only its own event", () => {
  class Divide {
    static name = "divide";
    process(event) {
      return sluice.reroute(`out.${1n / BigInt(event.object().n)}`);
    }
  }
  const divide = testing.harness(Divide, {});
  const [failed, fine, array] = divide.processBatch([testing.event("in", { n: 0 }), testing.event("in", { n: 1 }), new sluice.Event("in", new TextEncoder().encode("[1]"))]);
  assert.equal(failed.val.code, "exception");
  assert.match(failed.val.message, /^RangeError: [\w ]*[Dd]ivision by zero \(at .*app\.test\.js:\d+:\d+ in Divide\.process\)$/);
  assert.deepEqual(fine, sluice.reroute("out.1"));
  assert.deepEqual(array, sluice.reject("malformed", undefined, "expected a JSON object, found an array"));
});

test("an outcome the host could not take rejects its event", () => {
  class Careless {
    static name = "careless";
    process(event) {
      return event.subject === "in.a" ? sluice.reroute(7) : undefined;
    }
  }
  const careless = testing.harness(Careless, {});
  const [first, second] = careless.processBatch([testing.event("in.a", {}), testing.event("in.b", {})]);
  assert.deepEqual(first, sluice.reject("exception", undefined, "TypeError: careless.process returned reroute(a number), not a string"));
  assert.deepEqual(second, sluice.reject("exception", undefined, "TypeError: careless.process returned null, not an outcome"));
});
