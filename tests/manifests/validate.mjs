// Validates Istio and Gateway API resources against the schemas of the npm
// packages @kubernetes-models/istio and @kubernetes-models/gateway-api
// (generated from the projects' CRDs), in two passes:
//  1. the package's own validator (ajv, the CRD's OpenAPI schema): types,
//     enums, required fields, patterns;
//  2. TypeScript's excess-property check against the package's types, which
//     refuses unknown fields (the CRD schemas do not: an API server would
//     drop them silently, and a typo like `failStrategy` -> `failstrategy`
//     would turn a setting off without a word).
// Usage: node validate.mjs DOCS.json, where DOCS.json is
// [{"where": "file#index", "doc": {...}}, ...]. Prints one line per problem
// and exits 1 if there is any; kinds it has no schema for are an error too
// (the Python side sends only the kinds it expects this to cover).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const ts = require("typescript");

const PACKAGES = {
  "networking.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "telemetry.istio.io": "@kubernetes-models/istio",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  const pkg = PACKAGES[group];
  return pkg ? `${pkg}/${group}/${version}/${kind}` : null;
}

const docs = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const problems = [];
const typed = [];
for (const { where, doc } of docs) {
  const mod = modulePath(doc.apiVersion, doc.kind);
  if (!mod) {
    problems.push(`${where}: no schema package for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  let Model;
  try {
    Model = (await import(mod))[doc.kind];
  } catch (e) {
    problems.push(`${where}: ${mod} not found (${e.code || e.message})`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    problems.push(`${where}: ${doc.kind}: ${e.message}`);
  }
  typed.push({ where, doc, mod });
}

// Pass 2: one TypeScript file with each document as a literal of its type.
if (typed.length) {
  const file = path.join(here, `.strict-${process.pid}.ts`);
  const lines = [];
  typed.forEach(({ doc, mod }, i) => {
    lines.push(`import type { I${doc.kind} as T${i} } from "${mod}";`);
  });
  const starts = [];
  typed.forEach(({ doc }, i) => {
    starts.push(lines.length + 1);
    lines.push(`export const d${i}: T${i} = ${JSON.stringify(doc)};`);
  });
  fs.writeFileSync(file, lines.join("\n") + "\n");
  try {
    const program = ts.createProgram([file], {
      strict: true, noEmit: true, skipLibCheck: true,
      module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const message = ts.flattenDiagnosticMessageText(d.messageText, "\n").split("\n")
        .filter((l) => !/is not assignable to type|Type '\{/.test(l) || /does not exist/.test(l)).join(" / ")
        || ts.flattenDiagnosticMessageText(d.messageText, " ");
      let where = "typescript";
      if (d.file && d.start !== undefined) {
        const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
        const i = starts.indexOf(line + 1);
        const snippet = d.file.text.slice(d.start, d.start + 40).split(/[:,]/)[0];
        where = i >= 0 ? `${typed[i].where} (at ${snippet})` : `${path.basename(file)}:${line + 1}:${character}`;
      }
      problems.push(`${where}: ${message}`);
    }
  } finally {
    fs.unlinkSync(file);
  }
}

for (const p of problems) console.log(p);
console.log(`${docs.length} resources checked, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
