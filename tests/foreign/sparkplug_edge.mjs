// An Eclipse Tahu sparkplug-client edge node nobody on LinePulse wrote, for the tests.
//
//   node sparkplug_edge.mjs --broker mqtt://127.0.0.1:1883 --group G --edge E
//                           --schedule schedule.json [--autostart]
//
// It connects to the broker with Tahu's Node.js client, publishes an NBIRTH and one DBIRTH
// per device (every metric with its name, datatype, alias and current value), prints
// `ready` on stdout, and runs the schedule when it reads `start` on stdin (or at once
// with --autostart): it prints `started <t0>` (epoch ms) and, when the wall clock reaches
// t0 + at_ms, publishes one DDATA per step carrying the metric by alias only (no name),
// stamped t0 + at_ms; `done` after the last step. On an NCMD `Node Control/Rebirth` it
// publishes its births again, with the current values, as Sparkplug 3.0 §6.4.7 asks.
// SIGTERM or SIGINT: an NDEATH, disconnect, exit 0.
//
// Schedule (JSON):
// {
//   "devices": {"press-1": [{"name": "Status/State", "alias": 1, "type": "Int32",
//                            "value": 1}, ...]},
//   "steps": [{"at_ms": 200, "device": "press-1", "metric": "Status/State", "value": 2}]
// }
// Types are Sparkplug's (Int32, UInt32, Int64, UInt64, String, Boolean, Double...). 64-bit
// values may be given as decimal strings, since JSON numbers above 2^53 are not exact.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import Long from "long";
import sparkplug from "sparkplug-client";

const { values: args } = parseArgs({
  options: {
    broker: { type: "string" },
    group: { type: "string" },
    edge: { type: "string" },
    schedule: { type: "string" },
    autostart: { type: "boolean", default: false },
  },
});
if (!args.broker || !args.group || !args.edge || !args.schedule) {
  console.error(
    "usage: sparkplug_edge.mjs --broker URL --group G --edge E --schedule FILE [--autostart]",
  );
  process.exit(2);
}
const schedule = JSON.parse(readFileSync(args.schedule, "utf8"));

function wireValue(type, value) {
  if (type === "UInt64" || type === "Int64") {
    return Long.fromString(String(value), type === "UInt64");
  }
  return value;
}

// device -> metric name -> {alias, type, value, timestamp}
const metrics = new Map();
const started = Date.now();
for (const [device, list] of Object.entries(schedule.devices)) {
  const byName = new Map();
  for (const metric of list) {
    byName.set(metric.name, { ...metric, timestamp: started });
  }
  metrics.set(device, byName);
}

const client = sparkplug.newClient({
  serverUrl: args.broker,
  groupId: args.group,
  edgeNode: args.edge,
  clientId: `tahu-${args.edge}-${process.pid}`,
  username: "",
  password: "",
  version: "spBv1.0",
  publishDeath: true,
});

function births() {
  client.publishNodeBirth({
    timestamp: Date.now(),
    metrics: [{ name: "Node Control/Rebirth", type: "Boolean", value: false }],
  });
  for (const [device, byName] of metrics) {
    client.publishDeviceBirth(device, {
      timestamp: Date.now(),
      metrics: [...byName.values()].map((m) => ({
        name: m.name,
        alias: m.alias,
        type: m.type,
        value: wireValue(m.type, m.value),
        timestamp: m.timestamp,
      })),
    });
  }
}

let ready = false;
client.on("birth", () => {
  births();
  if (!ready) {
    ready = true;
    console.log("ready");
    if (args.autostart) {
      run();
    }
  }
});
client.on("ncmd", (payload) => {
  for (const metric of payload.metrics ?? []) {
    if (metric.name === "Node Control/Rebirth" && metric.value) {
      console.log("rebirth");
      births();
    }
  }
});
client.on("error", (error) => {
  console.error(`sparkplug client error: ${error}`);
});

let running = false;
function run() {
  if (running) {
    return;
  }
  running = true;
  const t0 = Date.now() + 300;
  console.log(`started ${t0}`);
  const steps = [...schedule.steps].sort((a, b) => a.at_ms - b.at_ms);
  let next = 0;
  const tick = () => {
    while (next < steps.length && Date.now() >= t0 + Math.floor(steps[next].at_ms)) {
      const step = steps[next++];
      const metric = metrics.get(step.device).get(step.metric);
      const stamp = t0 + Math.floor(step.at_ms);
      metric.value = step.value;
      metric.timestamp = stamp;
      client.publishDeviceData(step.device, {
        timestamp: stamp,
        metrics: [
          {
            alias: metric.alias,
            type: metric.type,
            value: wireValue(metric.type, step.value),
            timestamp: stamp,
          },
        ],
      });
    }
    if (next < steps.length) {
      setTimeout(tick, Math.max(0, t0 + Math.floor(steps[next].at_ms) - Date.now()));
    } else {
      console.log("done");
    }
  };
  setTimeout(tick, Math.max(0, t0 - Date.now()));
}

if (!args.autostart) {
  createInterface({ input: process.stdin }).on("line", (line) => {
    if (line.trim() === "start") {
      run();
    }
  });
}

let stopping = false;
function stop() {
  if (stopping) {
    return;
  }
  stopping = true;
  client.stop(); // publishes the NDEATH, then ends the MQTT connection
  setTimeout(() => process.exit(0), 200);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
