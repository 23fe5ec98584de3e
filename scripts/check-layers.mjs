#!/usr/bin/env node
// Checks the module graph inside each workspace crate, from its sources
// (no compiler, no npm packages):
//
// - no import circle: module A may not reach itself through the modules it
//   imports (`use crate::…`, `use super::…`, paths like `crate::x::f()` in
//   code, and a child module's name used as a path);
// - the edge imports downwards only: `edge/src/transport/` imports nothing
//   of the Socket.IO layer or the domain, and `edge/src/socketio/` nothing
//   of the domain (the rest of `edge/src`).
//
// A node is one source file (its inline `mod tests { … }` blocks included).
// An import points at the file that defines the item: a `pub use` is
// followed to where it leads. Not counted as imports: `mod` declarations
// (they make the tree), a `pub use` re-export its own file does not use,
// and a module's imports of its own submodules, which are its parts (so
// the crate root, lib.rs or main.rs, may wire every module, and a module
// split into a folder may use its pieces). What a parent defines, its
// children may use; two children importing each other is a circle.
//
// Run by scripts/test; prints one line per circle or upward import and
// exits 1 when there is any. `node scripts/check-layers.mjs DIR` checks the
// workspace at DIR (default: this repository); CHECK_LAYERS_GRAPH=edge
// also prints the edge crate's import graph.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), "..");

// The layers of a crate, bottom up: each names the top-level modules in
// it; the last one (null) is every other module, the crate root included.
// A module may import from its own layer and the layers below.
const LAYERS = {
  edge: [
    { name: "transport", modules: ["transport"] },
    { name: "socketio", modules: ["socketio"] },
    { name: "domain", modules: null },
  ],
};

/** The code of a Rust file with comments, strings and char literals blanked (newlines kept). */
function strip(src) {
  let out = "";
  let i = 0;
  const n = src.length;
  const blank = (s) => s.replace(/[^\n]/g, " ");
  while (i < n) {
    const c = src[i];
    const next = src[i + 1];
    if (c === "/" && next === "/") {
      const end = src.indexOf("\n", i);
      const stop = end === -1 ? n : end;
      out += blank(src.slice(i, stop));
      i = stop;
    } else if (c === "/" && next === "*") {
      let depth = 0;
      let j = i;
      while (j < n) {
        if (src[j] === "/" && src[j + 1] === "*") {
          depth++;
          j += 2;
        } else if (src[j] === "*" && src[j + 1] === "/") {
          depth--;
          j += 2;
          if (depth === 0) break;
        } else j++;
      }
      out += blank(src.slice(i, j));
      i = j;
    } else if ((c === "r" || (c === "b" && next === "r")) && /^b?r#*"/.test(src.slice(i, i + 40)) && !/\w/.test(src[i - 1] ?? "")) {
      const m = /^b?r(#*)"/.exec(src.slice(i));
      const close = `"${m[1]}`;
      const end = src.indexOf(close, i + m[0].length);
      const stop = end === -1 ? n : end + close.length;
      out += blank(src.slice(i, stop));
      i = stop;
    } else if (c === '"') {
      let j = i + 1;
      while (j < n && src[j] !== '"') j += src[j] === "\\" ? 2 : 1;
      out += blank(src.slice(i, j + 1));
      i = j + 1;
    } else if (c === "'") {
      // A char literal ('a', '\n', '\u{1F600}', 'é') or a lifetime ('a).
      let j = -1;
      if (next === "\\") {
        j = src.indexOf("'", i + 3);
      } else {
        const cp = src.codePointAt(i + 1);
        const w = cp > 0xffff ? 2 : 1;
        if (src[i + 1 + w] === "'") j = i + 1 + w;
      }
      if (j === -1) {
        out += c;
        i++;
      } else {
        out += blank(src.slice(i, j + 1));
        i = j + 1;
      }
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const IDENT = /[A-Za-z_][A-Za-z0-9_]*/y;

/** Tokens of stripped code: identifiers, `::` and single punctuation, with their offsets. */
function tokenize(code) {
  const tokens = [];
  let i = 0;
  while (i < code.length) {
    const c = code[i];
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    IDENT.lastIndex = i;
    const m = IDENT.exec(code);
    if (m) {
      tokens.push({ t: m[0], at: i });
      i += m[0].length;
    } else if (c === ":" && code[i + 1] === ":") {
      tokens.push({ t: "::", at: i });
      i += 2;
    } else if (/[0-9]/.test(c)) {
      // A number literal (with its suffix): one token.
      let j = i;
      while (j < code.length && /[0-9A-Za-z_.]/.test(code[j]) && !(code[j] === "." && code[j + 1] === ".")) j++;
      tokens.push({ t: "0", at: i });
      i = j;
    } else {
      tokens.push({ t: c, at: i });
      i++;
    }
  }
  return tokens;
}

/** The leaves of a use tree starting at tokens[k]: [{ path, alias, glob }] and the index after it. */
function parseUseTree(tokens, k, prefix, leaves) {
  const path = [...prefix];
  for (;;) {
    const tok = tokens[k]?.t;
    if (tok === "{") {
      k++;
      while (tokens[k] && tokens[k].t !== "}") {
        k = parseUseTree(tokens, k, path, leaves);
        if (tokens[k]?.t === ",") k++;
      }
      return k + 1;
    }
    if (tok === "*") {
      leaves.push({ path, alias: null, glob: true });
      return k + 1;
    }
    if (tok === undefined || !/^[A-Za-z_]/.test(tok)) return k;
    path.push(tok);
    k++;
    if (tokens[k]?.t === "::") {
      k++;
      continue;
    }
    let alias = tok === "self" ? path[path.length - 2] : tok;
    if (tokens[k]?.t === "as") {
      alias = tokens[k + 1].t;
      k += 2;
    }
    leaves.push({ path, alias, glob: false });
    return k;
  }
}

/** One parsed file: its `mod` declarations, inline modules, uses and path references. */
function parseFile(file) {
  const code = strip(readFileSync(file, "utf8"));
  const tokens = tokenize(code);
  const lineOf = (at) => code.slice(0, at).split("\n").length;
  const mods = []; // `mod x;` declarations at file level
  const uses = []; // { scope, leaves, pub, line }
  const refs = []; // { scope, path, line } outside use statements
  const idents = new Set(); // identifiers outside use statements
  const scope = []; // inline modules: { name, depth }
  let depth = 0;
  for (let k = 0; k < tokens.length; k++) {
    const t = tokens[k].t;
    if (t === "{") depth++;
    else if (t === "}") {
      depth--;
      if (scope.length && scope[scope.length - 1].depth === depth) scope.pop();
    } else if (t === "mod" && /^[A-Za-z_]/.test(tokens[k + 1]?.t ?? "") && tokens[k - 1]?.t !== "::") {
      const name = tokens[k + 1].t;
      if (tokens[k + 2]?.t === ";" && scope.length === 0) mods.push(name);
      if (tokens[k + 2]?.t === "{") {
        scope.push({ name, depth });
        depth++;
        k += 2;
      }
    } else if (t === "use" && tokens[k - 1]?.t !== "::") {
      // `pub use`, `pub(crate) use`, `pub(super) use`: a re-export.
      const pub = tokens[k - 1]?.t === "pub" || (tokens[k - 1]?.t === ")" && tokens[k - 4]?.t === "pub");
      const leaves = [];
      const line = lineOf(tokens[k].at);
      k = parseUseTree(tokens, k + 1, [], leaves);
      uses.push({ scope: scope.map((s) => s.name), leaves, pub, line });
      if (tokens[k]?.t !== ";") k--;
    } else if (/^[A-Za-z_]/.test(t)) {
      idents.add(t);
      if (tokens[k + 1]?.t === "::" && tokens[k - 1]?.t !== "::") {
        const path = [t];
        let j = k + 1;
        while (tokens[j]?.t === "::" && /^[A-Za-z_]/.test(tokens[j + 1]?.t ?? "")) {
          path.push(tokens[j + 1].t);
          j += 2;
        }
        refs.push({ scope: scope.map((s) => s.name), path, line: lineOf(tokens[k].at) });
      }
    }
  }
  return { mods, uses, refs, idents };
}

/** The module tree of one crate root: modules by path ("a::b"), each with its file. */
function moduleTree(rootFile) {
  const modules = new Map();
  const visit = (path, file) => {
    const parsed = parseFile(file);
    modules.set(path.join("::"), { path, file, ...parsed, children: new Set(parsed.mods) });
    // The crate root and mod.rs keep their children beside them; a.rs in a/.
    const dir = path.length === 0 || file.endsWith("mod.rs") ? dirname(file) : file.replace(/\.rs$/, "");
    for (const name of parsed.mods) {
      const found = [join(dir, `${name}.rs`), join(dir, name, "mod.rs")].find(existsSync);
      if (found) visit([...path, name], found); // else behind #[path] or generated: not checked
    }
  };
  visit([], rootFile);
  return modules;
}

/**
 * Resolves `path` (as written in module `from`, inside its inline `scope`)
 * to the file-level module that defines what it names; null for another
 * crate. Follows `pub use` re-exports.
 */
function resolve(modules, from, scope, path, seen = new Set()) {
  let at;
  let rest;
  if (path[0] === "crate") {
    at = [];
    rest = path.slice(1);
  } else if (path[0] === "super" || path[0] === "self") {
    // Inline modules live in their file: `super` from `mod tests` is the file.
    let level = scope.length;
    at = [...from];
    let k = 0;
    while (path[k] === "super" || path[k] === "self") {
      if (path[k] === "super") {
        if (level > 0) level--;
        else at = at.slice(0, -1);
      }
      k++;
    }
    rest = path.slice(k);
  } else if (scope.length === 0 && modules.get(from.join("::"))?.children.has(path[0])) {
    at = [...from];
    rest = path;
  } else {
    return null;
  }
  for (let k = 0; k < rest.length; k++) {
    const mod = modules.get(at.join("::"));
    if (!mod) return null;
    const seg = rest[k];
    if (mod.children.has(seg) && modules.has([...at, seg].join("::"))) {
      at = [...at, seg];
      continue;
    }
    // A name the module re-exports: follow it.
    const key = `${at.join("::")}#${seg}`;
    if (seen.has(key)) return at;
    for (const use of mod.uses) {
      if (!use.pub || use.scope.length) continue;
      const leaf = use.leaves.find((l) => !l.glob && l.alias === seg);
      if (leaf) {
        const target = resolve(modules, at, [], [...leaf.path, ...rest.slice(k + 1)], new Set([...seen, key]));
        return target;
      }
    }
    return at; // an item defined here
  }
  return at;
}

/** The import edges of a crate root's modules: Map(from -> Map(to -> line)). */
function importGraph(modules) {
  const graph = new Map();
  for (const [key, mod] of modules) {
    const edges = new Map();
    graph.set(key, edges);
    const add = (to, line) => {
      // A module's own submodules are its parts, not its imports.
      if (to === null || (to.length >= mod.path.length && mod.path.every((seg, i) => to[i] === seg))) return;
      const target = to.join("::");
      if (!edges.has(target)) edges.set(target, line);
    };
    for (const use of mod.uses) {
      for (const leaf of use.leaves) {
        // A re-export is an import only if the file itself uses the name.
        if (use.pub && use.scope.length === 0 && (leaf.glob || !mod.idents.has(leaf.alias))) continue;
        add(resolve(modules, mod.path, use.scope, leaf.path), use.line);
      }
    }
    for (const ref of mod.refs) add(resolve(modules, mod.path, ref.scope, ref.path), ref.line);
  }
  return graph;
}

/** Strongly connected components with more than one module (Tarjan). */
function circles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const out = [];
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const scc = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc);
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) strong(v);
  return out;
}

/** One cycle through `start` inside `scc`, as a list of modules ending where it began. */
function cycleThrough(graph, scc, start) {
  const inScc = new Set(scc);
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length) {
    const v = queue.shift();
    for (const w of graph.get(v).keys()) {
      if (!inScc.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let u = v; u !== start; u = prev.get(u)) path.splice(1, 0, u);
        return [...path, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return scc;
}

function layerOf(layers, modPath) {
  const top = modPath[0];
  const i = layers.findIndex((l) => l.modules?.includes(top));
  return i === -1 ? layers.length - 1 : i;
}

function members() {
  const toml = readFileSync(join(ROOT, "Cargo.toml"), "utf8");
  const m = /members\s*=\s*\[([^\]]*)\]/.exec(toml);
  return m ? [...m[1].matchAll(/"([^"]+)"/g)].map((x) => x[1]) : [];
}

function roots(member) {
  const src = join(ROOT, member, "src");
  const found = ["lib.rs", "main.rs"].map((f) => join(src, f)).filter(existsSync);
  const bin = join(src, "bin");
  if (existsSync(bin)) {
    for (const f of readdirSync(bin)) {
      if (f.endsWith(".rs")) found.push(join(bin, f));
      else if (existsSync(join(bin, f, "main.rs"))) found.push(join(bin, f, "main.rs"));
    }
  }
  return found;
}

const problems = [];
let checked = 0;
for (const member of members()) {
  const layers = LAYERS[member];
  for (const root of roots(member)) {
    const modules = moduleTree(root);
    checked += modules.size;
    const graph = importGraph(modules);
    const fileOf = (key) => relative(ROOT, modules.get(key).file);
    if (process.env.CHECK_LAYERS_GRAPH === member) {
      for (const [from, edges] of graph) console.log(`${fileOf(from)} -> ${[...edges.keys()].map(fileOf).join(", ")}`);
    }
    for (const scc of circles(graph)) {
      const cycle = cycleThrough(graph, scc, [...scc].sort()[0]);
      const steps = cycle.map(fileOf).join(" -> ");
      const others = scc.length > cycle.length - 1 ? ` (${scc.length} modules in the circle: ${scc.map(fileOf).sort().join(", ")})` : "";
      problems.push(`import circle in ${member}: ${steps}${others}`);
    }
    if (!layers) continue;
    for (const [from, edges] of graph) {
      const fromLayer = layerOf(layers, modules.get(from).path);
      for (const [to, line] of edges) {
        const toLayer = layerOf(layers, modules.get(to).path);
        if (toLayer > fromLayer) {
          problems.push(
            `upward import in ${member}: ${fileOf(from)}:${line} (${layers[fromLayer].name}) imports ${fileOf(to)} (${layers[toLayer].name})`,
          );
        }
      }
    }
  }
}

for (const p of problems) console.error(`error: ${p}`);
if (problems.length) {
  console.error(`check-layers: ${problems.length} problem(s); break a circle with a trait in the lower module, implemented above`);
  process.exit(1);
}
console.log(`check-layers: ${checked} modules, no import circle, the edge's layers import downwards only`);
