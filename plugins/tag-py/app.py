"""`tag`, in Python: checks that every event is a JSON object carrying the
required properties, and sets fixed properties on it. The same logic as the
Rust `tag` (plugins/tag), passing the same cases.

Stage config:

    config = { require = ["event"], set = { env = "demo" } }
"""

from dataclasses import dataclass, field
from typing import Any

import sluice_plugin as sluice


@dataclass
class Config:
    # Properties every event must have.
    require: list[str] = field(default_factory=list)
    # Properties set on every event, replacing any value already there.
    set: dict[str, Any] = field(default_factory=dict)


class Tag(sluice.Transform):
    name = "tag"
    Config = Config

    def __init__(self, config: Config):
        self.config = config

    def process(self, event: sluice.Event) -> sluice.Outcome:
        body = event.object()
        for name in self.config.require:
            if name not in body:
                return sluice.reject("missing_property", name, f"required property `{name}` is absent")
        if not self.config.set:
            return sluice.keep()
        body.update(self.config.set)
        return sluice.replace(event.with_body(body))


WitWorld = sluice.transform(Tag)
