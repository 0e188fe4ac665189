// The component's side of the SDK: puts the host's imports behind the SDK's
// `log`, `nowNs` and `count`. `build.sh` makes the component's entry module
// import this first and then re-export the plugin's `init` and `process`.
import { now } from "sluice:plugin/clock@0.2.1";
import { add } from "sluice:plugin/counters@0.2.1";
import { log } from "sluice:plugin/log@0.2.1";

import { useHost } from "./sluice-plugin.js";

useHost({ log, now, count: add });
