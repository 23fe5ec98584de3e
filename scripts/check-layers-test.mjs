#!/usr/bin/env node
// Tests of scripts/check-layers.mjs on small workspaces written to a
// temporary directory: a clean one passes; circles (through a `pub use`
// re-export too) and upward imports in the edge fail, each named; what
// comments, strings, char literals and inline test modules say is not an
// import. Run by scripts/test before the check itself.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const CHECK = join(dirname(fileURLToPath(import.meta.url)), "check-layers.mjs");

/** Writes `files` (path -> text) under a fresh directory; runs the check there. */
function check(files) {
  const root = mkdtempSync(join(tmpdir(), "check-layers-"));
  try {
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(root, path)), { recursive: true });
      writeFileSync(join(root, path), text);
    }
    const run = spawnSync(process.execPath, [CHECK, root], { encoding: "utf8" });
    return { status: run.status, out: run.stdout + run.stderr };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

const clean = {
  "Cargo.toml": '[workspace]\nmembers = ["edge", "tool"]\n',
  "edge/src/lib.rs": "mod rooms;\nmod socketio;\nmod transport;\npub struct Edge;\nfn wire() { rooms::run(); }\n",
  "edge/src/transport/mod.rs":
    "pub mod conn;\npub use conn::Conn;\n/// Calls up: [`crate::rooms`].\npub trait Handler { fn opened(&self, conn: &Conn); }\n",
  "edge/src/transport/conn.rs": [
    "// use crate::rooms; (a comment)",
    'const NOT_AN_IMPORT: &str = "crate::socketio::Socket";',
    "const QUOTE: char = '\\'';",
    "fn id<'a>(s: &'a str) -> &'a str { s }",
    "pub struct Conn;",
    "#[cfg(test)]",
    "mod tests {",
    "    use super::*;",
    "}",
    "",
  ].join("\n"),
  "edge/src/socketio/mod.rs": "use crate::transport::{Conn, Handler};\npub struct Socket(Conn);\n",
  "edge/src/rooms.rs": "use crate::socketio::Socket;\nuse crate::transport;\npub fn run() { let _ = crate::Edge; }\n",
  "tool/src/main.rs": "mod a;\nmod b;\nfn main() { b::y(); }\n",
  "tool/src/a.rs": "pub fn x() {}\n",
  "tool/src/b.rs": "use crate::a::x;\npub fn y() { x() }\n",
};

{
  const { status, out } = check(clean);
  assert.equal(status, 0, out);
  assert.match(out, /no import circle/);
}

{
  // tool: a <-> b; edge: transport/conn.rs imports the Socket.IO layer,
  // which imports conn.rs back through transport's `pub use`.
  const { status, out } = check({
    ...clean,
    "tool/src/a.rs": "use crate::b::y;\npub fn x() { y() }\n",
    "edge/src/transport/conn.rs": "use crate::socketio::Socket;\npub struct Conn;\n",
  });
  assert.equal(status, 1, out);
  assert.match(out, /import circle in tool: tool\/src\/a\.rs -> tool\/src\/b\.rs -> tool\/src\/a\.rs/);
  assert.match(
    out,
    /import circle in edge: edge\/src\/socketio\/mod\.rs -> edge\/src\/transport\/conn\.rs -> edge\/src\/socketio\/mod\.rs/,
  );
  assert.match(out, /upward import in edge: edge\/src\/transport\/conn\.rs:1 \(transport\) imports edge\/src\/socketio\/mod\.rs \(socketio\)/);
}

{
  // The Socket.IO layer reaching the domain, by a path in code and through
  // `super::super`; the transport reaching the crate root.
  const { status, out } = check({
    ...clean,
    "edge/src/socketio/mod.rs": "pub mod packet;\nuse crate::transport::Conn;\npub struct Socket(Conn);\n",
    "edge/src/socketio/packet.rs": "fn f() { super::super::rooms::run(); }\n",
    "edge/src/transport/mod.rs": "pub mod conn;\npub use conn::Conn;\nfn f(_: crate::Edge) {}\n",
  });
  assert.equal(status, 1, out);
  assert.match(out, /upward import in edge: edge\/src\/socketio\/packet\.rs:1 \(socketio\) imports edge\/src\/rooms\.rs \(domain\)/);
  assert.match(out, /upward import in edge: edge\/src\/transport\/mod\.rs:3 \(transport\) imports edge\/src\/lib\.rs \(domain\)/);
  assert.doesNotMatch(out, /import circle/);
}

console.log("check-layers-test: ok");
