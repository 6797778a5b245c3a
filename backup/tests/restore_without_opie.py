#!/usr/bin/env python3
"""Restore an opie backup from a directory store with python3 and the zstd CLI only.

usage: restore_without_opie.py STORE_DIR VOLUME BACKUP_ID OUTPUT_FILE
"""
import hashlib, json, os, subprocess, sys

store, volume, backup_id, out = sys.argv[1:5]
bdir = os.path.join(store, "backups", volume, backup_id)
manifest = json.load(open(os.path.join(bdir, "manifest.json")))
index = open(os.path.join(bdir, "index"), "rb").read()
assert hashlib.sha256(index).hexdigest() == manifest["index_sha256"], "index digest"
cs, size = manifest["chunk_size"], manifest["size"]
with open(out, "wb") as f:
    for i, name in enumerate(index.decode().splitlines()):
        length = min(cs, size - i * cs)
        if name == "zero":
            f.write(bytes(length))
            continue
        blob = open(os.path.join(store, "chunks", name[:2], name), "rb").read()
        assert blob[:4] == b"OPCK" and blob[4] == 1, f"chunk {i}: header"
        body = blob[10:]  # crc32c (Castagnoli) is not in the stdlib: SHA-256 below covers it
        if blob[5] == 1:
            body = subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout
        assert len(body) == length and hashlib.sha256(body).hexdigest() == name, f"chunk {i}: digest"
        f.write(body)
