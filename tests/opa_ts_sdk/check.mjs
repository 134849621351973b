// Drives a mesh-agent with the OPA TypeScript SDK (`@styra/opa`), unchanged.
//
// Usage: node check.mjs BASE_URL
//
// Every request goes through the SDK's `OPAClient`; the policy and data are loaded by the Rust
// test before this runs. The first failed check exits non-zero with a message.

import { OPAClient } from "@styra/opa";

const base = process.argv[2];
if (!base) {
  console.error("usage: node check.mjs BASE_URL");
  process.exit(2);
}

function check(what, ok, got) {
  if (!ok) {
    console.error(`FAILED: ${what}: got ${JSON.stringify(got)}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const opa = new OPAClient(base);

// evaluate: POST /v1/data/{path} with {"input": ...}, the result as the answer.
check("evaluate allow for alice", (await opa.evaluate("example/authz/allow", { user: "alice" })) === true);
check("evaluate allow for zed", (await opa.evaluate("example/authz/allow", { user: "zed" })) === false);
// fromResult shapes the answer, as the SDK documents.
const shaped = await opa.evaluate("example/authz/allow", { user: "alice" }, {
  fromResult: (r) => ({ allowed: r }),
});
check("evaluate with fromResult", shaped.allowed === true, shaped);

// evaluateDefault: POST / with the input as the body: data.system.main.
const main = await opa.evaluateDefault({ user: "alice" });
check("evaluateDefault", main && main.allow === true, main);

// evaluateBatch: POST /v1/batch/data/{path} with {"inputs": {...}}.
const batch = await opa.evaluateBatch("example/authz/allow", {
  a: { user: "alice" },
  z: { user: "zed" },
});
check("evaluateBatch", batch.a === true && batch.z === false, batch);

// getFilters needs partial evaluation (POST /v1/compile), which the agent says it cannot do.
try {
  await opa.getFilters("example/authz/allow", { user: "alice" }, { target: "ucastAll" });
  check("getFilters is refused", false, "an answer");
} catch (err) {
  const status = err?.httpMeta?.response?.status ?? err?.statusCode;
  check("getFilters is refused with 501", status === 501, String(err));
}

console.log("OK: the OPA TypeScript SDK works against the agent");
