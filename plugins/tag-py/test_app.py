import unittest

import sluice_plugin as sluice
from sluice_plugin import testing

import app


class TagTest(unittest.TestCase):
    def setUp(self):
        testing.reset()

    def test_sets_properties_and_requires_others(self):
        tag = testing.Harness(app.Tag, {"require": ["event"], "set": {"env": "demo"}})
        outcome = tag.process(testing.event("in.a", {"event": "a", "env": "prod"}))
        self.assertEqual(outcome, sluice.replace(testing.event("in.a", {"event": "a", "env": "demo"})))
        self.assertEqual(
            tag.process(testing.event("in.a", {"n": 1})),
            sluice.reject("missing_property", "event", "required property `event` is absent"),
        )

    def test_keeps_an_event_it_does_not_change_and_refuses_a_typo_in_its_config(self):
        tag = testing.Harness(app.Tag, {"require": ["event"]})
        self.assertEqual(tag.process(testing.event("in.a", {"event": "a"})), sluice.keep())
        with self.assertRaises(sluice.ConfigError) as refused:
            testing.Harness(app.Tag, {"requires": ["event"]})
        self.assertEqual(refused.exception.problems, [(["requires"], "unknown field `requires`, expected `require` or `set`")])
        with self.assertRaises(sluice.ConfigError) as refused:
            testing.Harness(app.Tag, {"require": ["event", 7]})
        self.assertEqual(str(refused.exception), "`require[1]`: expected a string, found a number")

    # The Rust and JavaScript `tag` (plugins/tag, plugins/tag-js) assert the same bytes.
    def test_writes_json_as_the_rust_plugins_do(self):
        tag = testing.Harness(app.Tag, {"set": {"z": 1.0}})
        body = b'{"b":1.0,"a":18446744073709551615,"c":1e300,"d":0.00001,"e":"\\u00e9\\n","f":-0.0,"g":36893488147419103232,"h":[1.5,-3]}'
        (tagged,) = tag.process(sluice.Event("in.a", body)).events
        self.assertEqual(tagged.body, b'{"a":18446744073709551615,"b":1.0,"c":1e+300,"d":0.00001,"e":"\xc3\xa9\\n","f":-0.0,"g":3.6893488147419103e+19,"h":[1.5,-3],"z":1.0}')

    def test_an_exception_rejects_only_its_own_event(self):
        class Divide(sluice.Transform):
            name = "divide"

            def __init__(self, config):
                pass

            def process(self, event):
                return sluice.reroute(f"out.{1 // event.object()['n']}")

        divide = testing.Harness(Divide, {})
        outcomes = divide.process_batch([testing.event("in", {"n": 0}), testing.event("in", {"n": 1}), sluice.Event("in", b"[1]")])
        self.assertEqual(outcomes[0].code, "exception")
        self.assertRegex(outcomes[0].message, r"^ZeroDivisionError: integer division or modulo by zero \(at test_app.py:\d+ in process\)$")
        self.assertEqual(outcomes[1], sluice.reroute("out.1"))
        self.assertEqual(outcomes[2], sluice.reject("malformed", None, "expected a JSON object, found an array"))

    def test_an_outcome_the_host_could_not_take_rejects_its_event(self):
        class Careless(sluice.Transform):
            name = "careless"

            def __init__(self, config):
                pass

            def process(self, event):
                return sluice.reroute(7) if event.subject == "in.a" else None

        careless = testing.Harness(Careless, {})
        first, second = careless.process_batch([testing.event("in.a", {}), testing.event("in.b", {})])
        self.assertEqual(first, sluice.reject("exception", None, "TypeError: Careless.process returned reroute(int), not a subject"))
        self.assertEqual(second, sluice.reject("exception", None, "TypeError: Careless.process returned NoneType, not an outcome"))


if __name__ == "__main__":
    unittest.main()
