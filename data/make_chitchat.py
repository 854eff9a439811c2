"""Builds data/chitchat.jsonl from the chitchat-dataset wheel (MIT; see chitchat.LICENSE).

    DIR=$(mktemp -d)
    pip download --no-deps chitchat-dataset==0.9.0 -d "$DIR"
    python3 data/make_chitchat.py "$DIR"/chitchat_dataset-0.9.0-py3-none-any.whl

Takes the first 400 conversations (of two turns or more) by id (sorted, so the file is reproducible), joins the
messages of each turn with spaces, alternates user/assistant roles from the first turn, and
keeps at most 8 turns so that a conversation fits a short training sequence.
"""
import hashlib
import json
import sys
import zipfile

WHEEL_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"

path = sys.argv[1]
assert hashlib.sha256(open(path, "rb").read()).hexdigest() == WHEEL_SHA256, "wheel checksum"
data = json.loads(zipfile.ZipFile(path).read("chitchat_dataset/dataset.json"))
out = []
for key in sorted(data):
    if len(out) == 400:
        break
    turns = [" ".join(m["text"].strip() for m in turn if m["text"].strip()) for turn in data[key]["messages"]]
    turns = [t for t in turns if t][:8]
    if len(turns) < 2:
        continue
    roles = ["user", "assistant"]
    out.append({"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]})
with open("data/chitchat.jsonl", "w") as f:
    for conv in out:
        f.write(json.dumps(conv, ensure_ascii=False) + "\n")
print(len(out), "conversations")
