#!/usr/bin/env python3
"""Static check of the repository's Dockerfile (CI has no container engine,
so the image is never built there): a Rust builder stage that builds
`confab`, a distroless nonroot runtime stage that copies the binary from
it, a non-root USER and `ENTRYPOINT ["/usr/local/bin/confab"]`, and a
.dockerignore that keeps target/ and .git out of the build context.
Before checking the real file it checks that broken variants are caught.
Standard library only."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((word.upper(), args.strip()))
        buf = ""
    return out


def problems(text: str) -> list[str]:
    found = []
    stages = []  # [{"image", "name", "body": [(instr, args)]}]
    for instr, args in instructions(text):
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            if not m:
                found.append(f"cannot read FROM {args}")
                continue
            stages.append({"image": m.group(1), "name": (m.group(2) or "").lower(), "body": []})
        elif stages:
            stages[-1]["body"].append((instr, args))
        else:
            if instr != "ARG":
                found.append(f"{instr} before the first FROM")
    if len(stages) < 2:
        return found + ["not multi-stage: expected a builder stage and a runtime stage"]

    builders = [s for s in stages[:-1] if s["name"] and s["image"].startswith("rust:")]
    if not builders:
        found.append("no named builder stage FROM rust:... AS <name>")
    elif not any(i == "RUN" and re.search(r"cargo build\b.*--release\b.*-p confab\b", a)
                 for b in builders for i, a in b["body"]):
        found.append("the builder stage does not run `cargo build --release ... -p confab`")

    final = stages[-1]
    if not re.match(r"(gcr\.io/)?distroless/\S+:\S*nonroot", final["image"]):
        found.append(f"the runtime stage is {final['image']}, not a distroless :nonroot image")
    names = {b["name"] for b in builders}
    if not any(i == "COPY" and re.search(r"--from=(\S+)", a) and re.search(r"--from=(\S+)", a).group(1).lower() in names
               and "target/release/confab" in a for i, a in final["body"]):
        found.append("the runtime stage does not COPY --from=<builder> target/release/confab")

    users = [a for i, a in final["body"] if i == "USER"]
    if not users:
        found.append("the runtime stage sets no USER (it would run as the image's default)")
    else:
        user = users[-1].split(":")[0]
        if user in ("0", "root") or not (user.isdigit() or user == "nonroot"):
            found.append(f"USER {users[-1]} is not a non-root numeric user (or nonroot)")

    entries = [a for i, a in final["body"] if i == "ENTRYPOINT"]
    try:
        entry = json.loads(entries[-1]) if entries else None
    except json.JSONDecodeError:
        entry = None
    if not (isinstance(entry, list) and entry and str(entry[0]).endswith("/confab")):
        found.append("ENTRYPOINT is not the exec form [\".../confab\"] (distroless has no shell)")
    return found


def main() -> int:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.is_file():
        print("error: Dockerfile is missing at the repository root", file=sys.stderr)
        return 1
    text = dockerfile.read_text()

    # The checker must catch these.
    broken = {
        "USER root": re.sub(r"^USER .*$", "USER root", text, flags=re.M),
        "no USER": re.sub(r"^USER .*$", "", text, flags=re.M),
        "an Ubuntu runtime": re.sub(r"^FROM gcr\.io/distroless/\S+", "FROM ubuntu:24.04", text, flags=re.M),
        "a shell-form ENTRYPOINT": re.sub(r"^ENTRYPOINT .*$", "ENTRYPOINT /usr/local/bin/confab", text, flags=re.M),
        "one stage": "FROM rust:1.95-bookworm\nRUN cargo build --release --locked -p confab\n",
    }
    for what, variant in broken.items():
        if variant == text or not problems(variant):
            print(f"error: the Dockerfile check does not catch {what}", file=sys.stderr)
            return 1

    found = problems(text)
    ignore = ROOT / ".dockerignore"
    entries = {l.strip().rstrip("/") for l in ignore.read_text().splitlines()} if ignore.is_file() else set()
    for needed in ("target", ".git"):
        if needed not in entries:
            found.append(f".dockerignore does not exclude {needed}")
    if found:
        for p in found:
            print(f"error: Dockerfile: {p}", file=sys.stderr)
        return 1
    print(f"Dockerfile: ok (builder stage, distroless nonroot runtime, non-root USER, "
          f"ENTRYPOINT confab; {len(broken)} broken variants caught)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
