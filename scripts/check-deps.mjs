#!/usr/bin/env node
// Checks the crate graph of Cargo.lock (every target platform, dev and build
// dependencies included), as `cargo metadata` reports it:
//
// - one version of each crate: two versions of one crate fail, except the
//   duplicates listed in DUPLICATES below, which come from third-party crates
//   we cannot change; an entry that is no longer duplicated fails too, so the
//   list stays true;
// - permissive licences only: a crate whose licence expression cannot be
//   satisfied from LICENCES fails.
//
// It does what `cargo deny check bans licenses` would, without compiling
// cargo-deny on every fresh CI machine (minutes on two cores). Run by
// scripts/test; exits non-zero with one line per problem.
import { execFileSync } from "node:child_process";

// Licences (SPDX identifiers) a dependency may be used under.
const LICENCES = new Set([
  "0BSD",
  "Apache-2.0",
  "BSD-2-Clause",
  "BSD-3-Clause",
  "BSL-1.0",
  "ISC",
  "MIT",
  "Unicode-3.0",
  "Unlicense",
  "Zlib",
]);
// Licence exceptions (`X WITH e`) that keep a permissive licence permissive.
const EXCEPTIONS = new Set(["LLVM-exception"]);

// Crates allowed in two versions, and why. Each is pulled in twice by
// third-party crates; none of our Cargo.toml lines can remove it.
const DUPLICATES = {
  // 0.23 by hyper-util; 0.22 by tonic, reqwest, jsonwebtoken, engineioxide.
  base64: "hyper-util moved to 0.23 before the rest of the stack",
  // The RustCrypto 0.10 generation (sha2, hmac, rsa, p256, ed25519-dalek of
  // jsonwebtoken's rust_crypto backend) and the 0.11 one (sha1 of
  // tungstenite 0.30, chacha20 of rand 0.10).
  "block-buffer": "RustCrypto generations: jsonwebtoken vs tungstenite/rand",
  "const-oid": "RustCrypto generations: jsonwebtoken vs tungstenite",
  cpufeatures: "RustCrypto generations: jsonwebtoken vs tungstenite/rand",
  "crypto-common": "RustCrypto generations: jsonwebtoken vs tungstenite",
  digest: "RustCrypto generations: jsonwebtoken vs tungstenite",
  // 0.2 by jsonwebtoken and rand_core 0.6; 0.4 by rand 0.10, tempfile, uuid.
  getrandom: "jsonwebtoken and rsa still use rand 0.8 / getrandom 0.2",
  // 0.8 by jsonwebtoken and rsa (num-bigint-dig); 0.10 by us, engineioxide,
  // tungstenite and proptest.
  rand: "jsonwebtoken and rsa still use rand 0.8, the scylla driver rand 0.9",
  // 0.3 by rand 0.8 (jsonwebtoken), 0.9 by rand 0.9 (the scylla driver);
  // rand 0.10 has none.
  rand_chacha: "rand 0.8 and 0.9 each bring their own",
  // Older generations brought by kassandra-tester (an in-memory CQL server,
  // a dev-dependency of store-svc for its driver wiring test only; its
  // kassandra crate has had no release on thiserror 2 or nom 8).
  thiserror: "kassandra-tester (dev) is on thiserror 1",
  "thiserror-impl": "kassandra-tester (dev) is on thiserror 1",
  nom: "kassandra-tester (dev) on nom 7, hdrhistogram on nom 8",
  heck: "strum_macros under kassandra-tester (dev) on heck 0.4",
  "proc-macro-crate": "num_enum under kassandra-tester (dev) vs borsh-derive",
  toml_edit: "proc-macro-crate 1 under kassandra-tester (dev) vs 3",
  toml_datetime: "follows the two toml_edit versions",
  winnow: "follows the two toml_edit versions",
  // 0.14 by prost-build and prost-derive; 0.15 by the scylla driver.
  itertools: "prost's code generators and the scylla driver",
  // 0.1 by hashbrown 0.15 (petgraph, under prost-build); 0.2 by hashbrown 0.16.
  foldhash: "follows the two hashbrown versions",
  // UEFI-only, never built here: getrandom 0.3 (rand 0.9) and 0.4 differ.
  "r-efi": "getrandom 0.3 of the scylla driver's rand 0.9 vs getrandom 0.4",
  rand_core: "jsonwebtoken and rsa still use rand 0.8",
  // 0.15 by petgraph (prost-build, a build dependency); 0.17 by indexmap.
  hashbrown: "petgraph, under prost-build, pins hashbrown 0.15",
  // 0.8 by axum (the edge's HTTP API); 0.9 by socketioxide (the benchmark's
  // ceiling server only).
  matchit: "axum 0.8 and socketioxide 0.18 route with different matchit",
  // 2 by prost-derive, tonic-build, tracing-attributes, pin-project; 3 by
  // serde_derive, thiserror, clap_derive, tokio-macros.
  syn: "the proc-macro ecosystem is midway from syn 2 to syn 3",
  // Windows-only crates, in 0.52 for ring alone: rustls-webpki's weak
  // feature `ring?/alloc` puts ring into Cargo.lock though nothing enables
  // it (a known Cargo behaviour; `cargo tree -i ring` finds no path), and in
  // 0.48/0.61 for loom (under socketioxide) and tokio.
  "windows-sys": "ring, listed but never built (rustls-webpki's weak feature)",
  "windows-targets": "ring's windows-sys 0.52 vs loom's windows 0.48",
  windows_aarch64_gnullvm: "as windows-targets",
  windows_aarch64_msvc: "as windows-targets",
  windows_i686_gnu: "as windows-targets",
  windows_i686_msvc: "as windows-targets",
  windows_x86_64_gnu: "as windows-targets",
  windows_x86_64_gnullvm: "as windows-targets",
  windows_x86_64_msvc: "as windows-targets",
};

const meta = JSON.parse(
  execFileSync("cargo", ["metadata", "--format-version", "1", "--locked"], {
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  }),
);
const problems = [];
const byId = new Map(meta.packages.map((p) => [p.id, p]));
const workspace = new Set(meta.workspace_members);

// Who depends on each package, to say where a duplicate comes from.
const dependents = new Map();
for (const node of meta.resolve.nodes) {
  for (const dep of node.deps) {
    const name = byId.get(node.id).name;
    dependents.set(dep.pkg, [...(dependents.get(dep.pkg) ?? []), name]);
  }
}

const versions = new Map();
for (const p of meta.packages) {
  versions.set(p.name, [...(versions.get(p.name) ?? []), p]);
}
for (const [name, pkgs] of versions) {
  if (pkgs.length > 1 && !(name in DUPLICATES)) {
    const from = pkgs.map((p) => `${p.version} (from ${(dependents.get(p.id) ?? []).join(", ")})`);
    problems.push(`duplicate crate ${name}: ${from.join("; ")}`);
  }
}
for (const name of Object.keys(DUPLICATES)) {
  if ((versions.get(name) ?? []).length < 2) {
    problems.push(`${name} is no longer duplicated: remove it from DUPLICATES in scripts/check-deps.mjs`);
  }
}

for (const p of meta.packages) {
  const where = `${p.name} ${p.version}`;
  if (!p.license) {
    problems.push(`${where} declares no SPDX licence${p.license_file ? ` (only a licence file)` : ""}`);
    continue;
  }
  try {
    if (!permitted(p.license)) {
      problems.push(`${where} has a licence outside the allow-list: ${p.license}`);
    }
  } catch (e) {
    problems.push(`${where}: cannot read its licence "${p.license}": ${e.message}`);
  }
}

if (problems.length > 0) {
  for (const p of problems) console.error(`error: ${p}`);
  process.exit(1);
}
const external = meta.packages.filter((p) => !workspace.has(p.id)).length;
console.log(`check-deps: ${external} crates, ${Object.keys(DUPLICATES).length} allowed duplicates, licences permitted`);

// Whether an SPDX expression ("MIT OR Apache-2.0", "(A OR B) AND C",
// "Apache-2.0 WITH LLVM-exception", the older "MIT/Apache-2.0") can be met
// with the allowed licences.
function permitted(expression) {
  const tokens = expression.replace(/[()/]/g, (c) => ` ${c === "/" ? "OR" : c} `).split(/\s+/).filter(Boolean);
  let at = 0;
  const next = () => tokens[at++];
  const peek = () => tokens[at];
  const or = () => {
    let ok = and();
    while (peek() === "OR") {
      next();
      ok = and() || ok;
    }
    return ok;
  };
  const and = () => {
    let ok = term();
    while (peek() === "AND") {
      next();
      ok = term() && ok;
    }
    return ok;
  };
  const term = () => {
    const t = next();
    if (t === "(") {
      const ok = or();
      if (next() !== ")") throw new Error("unbalanced parentheses");
      return ok;
    }
    if (t === undefined || ["AND", "OR", "WITH", ")"].includes(t)) throw new Error(`unexpected ${t ?? "end"}`);
    if (peek() === "WITH") {
      next();
      const exception = next();
      if (exception === undefined) throw new Error("WITH without an exception");
      return LICENCES.has(t) && EXCEPTIONS.has(exception);
    }
    return LICENCES.has(t.replace(/\+$/, ""));
  };
  const ok = or();
  if (at !== tokens.length) throw new Error(`unexpected ${peek()}`);
  return ok;
}
