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

// getFilters: POST /v1/compile/{path} with the target's Accept header; the agent partially
// evaluates data.filters.<rule> (loaded by the Rust test) with input.fruits unknown.
const unknowns = ["input.fruits"];

// Key order does not matter in UCAST: compare canonically.
function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return value;
}
const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));

const include = await opa.getFilters("filters/include", { colour: "red" }, { target: "ucastALL", unknowns });
check(
  "getFilters ucastALL: the bodies as OR, known values in place",
  same(include.query, {
    type: "compound",
    operator: "or",
    value: [
      { type: "field", operator: "eq", field: "fruits.colour", value: "red" },
      {
        type: "compound",
        operator: "and",
        value: [
          { type: "field", operator: "lt", field: "fruits.price", value: 5 },
          { type: "field", operator: "in", field: "fruits.name", value: ["apple", "pear"] },
        ],
      },
    ],
  }),
  include,
);

const postgres = await opa.getFilters("filters/include", { colour: "red" }, { target: "postgresql", unknowns });
check(
  "getFilters postgresql",
  postgres.query ===
    "WHERE (fruits.colour = E'red' OR (fruits.price < E'5' AND fruits.name IN (E'apple', E'pear')))",
  postgres,
);
const mysql = await opa.getFilters("filters/include", { colour: "red" }, { target: "mysql", unknowns });
check(
  "getFilters mysql",
  mysql.query === "WHERE (fruits.colour = 'red' OR (fruits.price < '5' AND fruits.name IN ('apple', 'pear')))",
  mysql,
);
const mapped = await opa.getFilters("filters/owned", { user: "alice" }, {
  target: "sqlserver",
  unknowns,
  tableMappings: { fruits: { $self: "fruit_table", owner: "owner_id" } },
});
check("getFilters sqlserver with table mappings", mapped.query === "WHERE fruit_table.owner_id = N'alice'", mapped);

const prisma = await opa.getFilters("filters/owned", { user: "alice" }, {
  ucastPrisma: { primary: "fruits" },
  unknowns,
});
check("getFilters ucastPrisma", same(prisma.query, { owner: { equals: "alice" } }), prisma.query);

const linq = await opa.getFilters("filters/include", { colour: "red" }, { target: "ucastLinq", unknowns });
check("getFilters ucastLinq (in is LINQ's)", linq.query?.operator === "or", linq);

// Never true: no query; always true: the empty condition, and no WHERE clause.
const nobody = await opa.getFilters("filters/owned", { user: "nobody" }, { target: "ucastALL", unknowns });
check("getFilters never true has no query", nobody.query === undefined, nobody);
const admin = await opa.getFilters("filters/everything", { user: "admin" }, { target: "ucastALL", unknowns });
check("getFilters always true is {}", same(admin.query, {}), admin);
const adminSql = await opa.getFilters("filters/everything", { user: "admin" }, { target: "postgresql", unknowns });
check("getFilters always true is an empty WHERE", adminSql.query === "", adminSql);

// getMultipleFilters: one request, several targets.
const multi = await opa.getMultipleFilters("filters/owned", { user: "alice" }, {
  targets: ["ucastALL", "postgresql", "sqlite"],
  unknowns,
});
check(
  "getMultipleFilters",
  same(multi.ucast?.query, { type: "field", operator: "eq", field: "fruits.owner", value: "alice" }) &&
    multi.postgresql?.query === "WHERE fruits.owner = E'alice'" &&
    multi.sqlite?.query === "WHERE fruits.owner = 'alice'",
  multi,
);

// What a target cannot express is refused as OPA refuses it (400, pe_fragment_error)...
try {
  await opa.getFilters("filters/not_apple", {}, { target: "ucastLinq", unknowns });
  check("getFilters refuses `not` for LINQ", false, "an answer");
} catch (err) {
  check(
    "getFilters refuses `not` for LINQ",
    err?.code === "evaluation_error" && err?.errors?.[0]?.code === "pe_fragment_error" &&
      err.errors[0].message.includes("\"not\" not permitted") && err.errors[0].location?.row === 19,
    { name: err?.name, code: err?.code, errors: err?.errors, message: String(err) },
  );
}
// ...and what the agent's partial evaluator does not support is 501, with where it is.
try {
  await opa.getFilters("filters/tagged", {}, { target: "ucastALL", unknowns });
  check("getFilters refuses iteration over an unknown", false, "an answer");
} catch (err) {
  const status = err?.httpMeta?.response?.status ?? err?.statusCode;
  check("getFilters refuses iteration over an unknown with 501", status === 501, String(err));
}

console.log("OK: the OPA TypeScript SDK works against the agent");
