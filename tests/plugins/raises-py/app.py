"""A Python transform written without the SDK: it sends each event to
`out.<n>`, and lets the exception escape when `n` is not a number, so the
component traps. The host's dead letter must carry the exception and its
line, and the events around it must flow on."""

import json

import wit_world
from wit_world.imports import types


def parse(body: bytes) -> int:
    return int(json.loads(body)["n"])


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pass

    def process(self, batch):
        return [types.Outcome_Reroute(f"out.{parse(e.body)}") for e in batch]
