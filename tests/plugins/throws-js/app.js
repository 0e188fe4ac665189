// A JavaScript transform written without the SDK: it sends each event to
// `out.<user.name>`, and lets the error escape for an event without a
// `user`, so the component traps. The host's dead letter must carry the
// error and its line, and the events around it must flow on.
function parse(body) {
  const value = JSON.parse(new TextDecoder().decode(body));
  return value.user.name;
}

export function init(config) {}

export function process(batch) {
  return batch.map((e) => ({ tag: "reroute", val: `out.${parse(e.body)}` }));
}
