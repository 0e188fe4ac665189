// `tag`, in JavaScript: checks that every event is a JSON object carrying the
// required properties, and sets fixed properties on it. The same logic as the
// Rust `tag` (plugins/tag), passing the same cases.
//
// Stage config:
//   config = { require = ["event"], set = { env = "demo" } }
import * as sluice from "../sdk/js/sluice-plugin.js";

const { t } = sluice;

export class Tag {
  static name = "tag";
  static config = {
    // Properties every event must have.
    require: t.list(t.string).default([]),
    // Properties set on every event, replacing any value already there.
    set: t.table(t.any).default({}),
  };

  constructor(config) {
    this.require = config.require;
    this.set = Object.entries(config.set);
  }

  process(event) {
    const body = event.object();
    const missing = this.require.find((name) => !Object.hasOwn(body, name));
    if (missing !== undefined) {
      return sluice.reject("missing_property", missing, `required property \`${missing}\` is absent`);
    }
    if (this.set.length === 0) {
      return sluice.keep();
    }
    for (const [name, value] of this.set) {
      body[name] = value;
    }
    return sluice.replace(event.withBody(body));
  }
}

export const { init, process } = sluice.transform(Tag);
