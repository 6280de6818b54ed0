#!/usr/bin/env python3
"""Runs the real `huggingface_hub` client against a hub-server and checks what it downloads.

usage: check_download.py URL REPO_ID WEIGHTS_FILE EXPECTED_SAFETENSORS [PRIVATE_REPO_ID TOKEN]

Exits 0 when every check passes, 3 when huggingface_hub is not installed (the caller decides
whether that is a skip), 1 on a failed check (the reason on stderr).
"""
import json
import os
import struct
import sys
import tempfile


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def tensors(blob):
    """name -> (dtype, shape, raw bytes) of a safetensors file, read with the stdlib only."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = (t["dtype"], tuple(t["shape"]), data[a:b])
    return out


def main():
    if len(sys.argv) not in (5, 7):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, repo, weights, expected = sys.argv[1:5]
    private = sys.argv[5:7]
    home = tempfile.mkdtemp(prefix="dlv-hf-")
    # The client reads these when it is imported.
    os.environ["HF_ENDPOINT"] = url
    os.environ["HF_HOME"] = home
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.pop("HF_TOKEN", None)
    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors
    except ImportError:
        print("huggingface_hub is not installed", file=sys.stderr)
        sys.exit(3)
    print(f"huggingface_hub {hf.__version__} against {url}")

    want = open(expected, "rb").read()

    info = hf.model_info(repo)
    names = sorted(s.rfilename for s in (info.siblings or []))
    if weights not in names:
        fail(f"model_info siblings {names} lack {weights}")
    if not info.sha or len(info.sha) != 40:
        fail(f"model_info sha {info.sha!r} is not 40 hex digits")
    print(f"model_info: {info.id} sha={info.sha} files={names}")

    path = hf.hf_hub_download(repo, weights)
    got = open(path, "rb").read()
    if got != want:
        fail(f"hf_hub_download({weights}) differs from the published file ({len(got)} vs {len(want)} bytes)")
    tw, tg = tensors(want), tensors(got)
    if tw.keys() != tg.keys() or any(tw[k] != tg[k] for k in tw):
        fail("tensors differ")
    print(f"hf_hub_download: {len(tg)} tensors bit-identical")

    # Warm cache: HEAD only, same path back.
    again = hf.hf_hub_download(repo, weights)
    if open(again, "rb").read() != want:
        fail("second hf_hub_download differs")

    # A pinned revision.
    pinned = hf.hf_hub_download(repo, weights, revision=info.sha)
    if open(pinned, "rb").read() != want:
        fail("download at the pinned sha differs")

    snap = hf.snapshot_download(repo)
    files = sorted(
        os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs
    )
    if open(os.path.join(snap, weights), "rb").read() != want:
        fail("snapshot_download weights differ")
    protos = [f for f in files if f.endswith(".prototxt")]
    if not protos:
        fail(f"snapshot has no prototxt: {files}")
    text = open(os.path.join(snap, protos[0])).read()
    if "layer" not in text:
        fail("the prototxt has no layers")
    print(f"snapshot_download: {files}")

    listed = [m.id for m in hf.list_models(author=repo.split("/")[0])]
    if repo not in listed:
        fail(f"list_models lacks {repo}: {listed}")
    found = [m.id for m in hf.list_models(search=repo.split("/")[1], limit=5)]
    if repo not in found:
        fail(f"list_models(search=…) lacks {repo}: {found}")
    print(f"list_models: {listed}")

    try:
        hf.hf_hub_download(repo, "no-such-file.bin")
        fail("a missing file downloaded")
    except errors.EntryNotFoundError:
        pass

    try:
        hf.whoami(token="dlvhub_not-a-real-token")
        fail("whoami accepted an unknown token")
    except errors.HfHubHTTPError as e:
        if e.response is None or e.response.status_code != 401:
            fail(f"whoami with an unknown token: {e}")
    print("whoami: unknown token refused with 401")

    if private:
        prepo, token = private
        try:
            hf.model_info(prepo)
            fail("a private model is visible without a token")
        except errors.RepositoryNotFoundError:
            pass
        me = hf.whoami(token=token)
        if me.get("name") != prepo.split("/")[0]:
            fail(f"whoami answered {me}")
        p = hf.hf_hub_download(prepo, weights, token=token)
        if tensors(open(p, "rb").read()).keys() != tw.keys():
            fail("private download differs")
        print("private model: 404 without token, downloads with it")

    print("OK")


if __name__ == "__main__":
    main()
