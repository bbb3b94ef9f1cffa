// A node-opcua server playing a PLC nobody on LinePulse wrote, for the integration tests.
//
//   node opcua_server.mjs --port 4840 --schedule schedule.json --pki DIR [--autostart]
//
// It serves the variables of the schedule (see schedule below) on opc.tcp://127.0.0.1:PORT
// with security None and anonymous access, prints `ready <endpoint>` on stdout once it
// listens, and runs the schedule when it reads `start` on stdin (or at once with
// --autostart): it prints `started <t0>` (epoch ms), writes each step when the wall
// clock reaches t0 + at_ms, stamped with SourceTimestamp t0 + at_ms exactly (a fraction
// of a millisecond goes into the picoseconds, as a PLC's clock gives them), and prints
// `done` after the last one. SIGTERM or SIGINT shuts it down and exits 0.
//
// Schedule (JSON):
// {
//   "namespaces": ["urn:decoy", "urn:plant"],   // registered in this order; the variables
//                                               // live in the last one (so its index is
//                                               // not the 1 or 2 a config might guess)
//   "variables": [
//     {"node": "Press1.State", "type": "Int32", "initial": 1},  // ns=<plant>;s=Press1.State,
//                                               // browse path <plant>:Press1/<plant>:State
//     {"node": "Press1.Mode", "type": "String", "waiting": true}, // BadWaitingForInitialData
//     {"node": "Press1.Note", "type": "String"} // never written: node-opcua's own
//                                               // UncertainInitialValue
//   ],
//   "steps": [{"at_ms": 1200.95, "node": "Press1.State", "value": 2,
//              "status": "UncertainLastUsableValue"}]  // status optional (Good)
// }
// Types: Boolean, Int32, UInt32, Int64, UInt64, Double, String. 64-bit values may be given
// as decimal strings, since JSON numbers above 2^53 are not exact.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import {
  DataType,
  DataValue,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAServer,
  SecurityPolicy,
  StatusCodes,
  Variant,
  VariantArrayType,
} from "node-opcua";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    schedule: { type: "string" },
    pki: { type: "string" },
    autostart: { type: "boolean", default: false },
  },
});
if (!args.port || !args.schedule || !args.pki) {
  console.error("usage: opcua_server.mjs --port N --schedule FILE --pki DIR [--autostart]");
  process.exit(2);
}
const schedule = JSON.parse(readFileSync(args.schedule, "utf8"));

// A 64-bit integer as node-opcua's [high, low] pair of 32-bit words.
function words(value) {
  const big = BigInt.asUintN(64, BigInt(value));
  return [Number(big >> 32n), Number(big & 0xffffffffn)];
}

function variant(type, value) {
  const dataType = DataType[type];
  if (dataType === undefined) {
    throw new Error(`unknown type ${type}`);
  }
  if (type === "UInt64" || type === "Int64") {
    return new Variant({ dataType, arrayType: VariantArrayType.Scalar, value: words(value) });
  }
  return new Variant({ dataType, value });
}

function status(name) {
  const code = StatusCodes[name ?? "Good"];
  if (code === undefined) {
    throw new Error(`unknown status code ${name}`);
  }
  return code;
}

// Epoch ms with a fraction, as a Date and the picoseconds below its millisecond.
function clock(ms) {
  const whole = Math.floor(ms);
  return { timestamp: new Date(whole), picoseconds: Math.round((ms - whole) * 1e9) };
}

// Sets a value as a PLC driver would: its own SourceTimestamp, to the 100 ns tick. The
// public setValueFromSource takes a Date (whole ms), so the DataValue is set directly.
function write(variable, type, value, statusName, ms) {
  const when = clock(ms);
  variable._internal_set_dataValue(
    new DataValue({
      value: variant(type, value),
      statusCode: status(statusName),
      sourceTimestamp: when.timestamp,
      sourcePicoseconds: when.picoseconds,
      serverTimestamp: new Date(),
    }),
  );
}

const certificates = new OPCUACertificateManager({
  rootFolder: args.pki,
  automaticallyAcceptUnknownCertificate: true,
});
const server = new OPCUAServer({
  port: Number(args.port),
  hostname: "127.0.0.1",
  resourcePath: "/plc",
  securityModes: [MessageSecurityMode.None],
  securityPolicies: [SecurityPolicy.None],
  allowAnonymous: true,
  serverCertificateManager: certificates,
  buildInfo: { productName: "LinePulse foreign test PLC (node-opcua)" },
});
await server.initialize();

const addressSpace = server.engine.addressSpace;
let namespace;
for (const uri of schedule.namespaces) {
  namespace = addressSpace.registerNamespace(uri);
}
const folders = new Map();
const variables = new Map();
for (const spec of schedule.variables) {
  const dot = spec.node.indexOf(".");
  const folderName = spec.node.slice(0, dot);
  if (!folders.has(folderName)) {
    folders.set(
      folderName,
      namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: folderName }),
    );
  }
  const variable = namespace.addVariable({
    componentOf: folders.get(folderName),
    browseName: spec.node.slice(dot + 1),
    nodeId: `s=${spec.node}`,
    dataType: spec.type,
    minimumSamplingInterval: 0, // values change when the PLC writes them, not on a poll
  });
  if (spec.waiting) {
    variable._internal_set_dataValue(
      new DataValue({
        statusCode: StatusCodes.BadWaitingForInitialData,
        sourceTimestamp: new Date(),
        serverTimestamp: new Date(),
      }),
    );
  } else if (spec.initial !== undefined) {
    write(variable, spec.type, spec.initial, "Good", Date.now());
  }
  variables.set(spec.node, { variable, type: spec.type });
}

await server.start();
console.log(`ready ${server.getEndpointUrl()}`);

let started = false;
function run() {
  if (started) {
    return;
  }
  started = true;
  const t0 = Date.now() + 300; // time to print the line before the first step is due
  console.log(`started ${t0}`);
  const steps = [...schedule.steps].sort((a, b) => a.at_ms - b.at_ms);
  let next = 0;
  const tick = () => {
    while (next < steps.length && Date.now() >= t0 + Math.floor(steps[next].at_ms)) {
      const step = steps[next++];
      const target = variables.get(step.node);
      write(target.variable, target.type, step.value, step.status, t0 + step.at_ms);
    }
    if (next < steps.length) {
      setTimeout(tick, Math.max(0, t0 + Math.floor(steps[next].at_ms) - Date.now()));
    } else {
      console.log("done");
    }
  };
  setTimeout(tick, Math.max(0, t0 - Date.now()));
}

if (args.autostart) {
  run();
} else {
  createInterface({ input: process.stdin }).on("line", (line) => {
    if (line.trim() === "start") {
      run();
    }
  });
}

let stopping = false;
async function stop() {
  if (stopping) {
    return;
  }
  stopping = true;
  await server.shutdown(0);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
