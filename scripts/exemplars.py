#!/usr/bin/env python3
"""Writes the semantic layer's exemplars into a constitution, from the TRAINING
part of the labelled set only: each category's `examples` are its harmful
training rows and its `allowed_examples` its harmless look-alikes. The held-out
part (tests/data/moderation/heldout.jsonl) is never read here.

    scripts/exemplars.py [tests/data/moderation/train.jsonl] [config/constitution.toml]

Existing `examples`/`allowed_examples` arrays are replaced; everything else in
the file (comments included) is kept. Then choose the rule's numbers with
`steward moderation fit` and measure with `steward moderation eval`.
"""
import json
import re
import sys

train = sys.argv[1] if len(sys.argv) > 1 else "tests/data/moderation/train.jsonl"
path = sys.argv[2] if len(sys.argv) > 2 else "config/constitution.toml"

rows = [json.loads(line) for line in open(train, encoding="utf-8") if line.strip()]
by_category = {}
for row in rows:
    key = "examples" if row["label"] == "harmful" else "allowed_examples"
    by_category.setdefault(row["category"], {"examples": [], "allowed_examples": []})[key].append(row["text"])

text = open(path, encoding="utf-8").read()
# Drop arrays written by an earlier run.
text = re.sub(r'^(?:allowed_)?examples = \[\n(?:  .*\n)*\]\n', "", text, flags=re.M)
blocks = re.split(r"(?=^\[\[categories\]\]$)", text, flags=re.M)
out = [blocks[0]]
for block in blocks[1:]:
    name = re.search(r'^name = "([^"]+)"$', block, flags=re.M).group(1)
    block = block.rstrip("\n") + "\n"
    for key in ("examples", "allowed_examples"):
        items = by_category.get(name, {}).get(key, [])
        if items:
            body = "".join(f"  {json.dumps(item, ensure_ascii=False)},\n" for item in items)
            block += f"{key} = [\n{body}]\n"
    out.append(block + "\n")
open(path, "w", encoding="utf-8").write("".join(out).rstrip("\n") + "\n")
print(f"{path}: exemplars from {len(rows)} training rows", file=sys.stderr)
