"""hf-push-tool's Hub path vs plain huggingface_hub `upload_folder`, against the project's Hub server
on 127.0.0.1 (tests/servers/hub.py), with the real client over HTTP (classic LFS, no Xet).

A multi-file GGUF-like set (random bytes, so nothing compresses or dedups) is pushed to a fresh repo
each way, alternating which goes first; then the set is pushed again unchanged. Prints wall times,
the ratio (target: hf-push-tool within 10% of upload_folder) and the bytes the server received on
the re-push (target: 0 bytes of file content).

    python bench/push.py [--size-mb 1024] [--files 4] [--runs 6] [--work bench-work/push] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TOKEN = "hf_bench_token"


def make_set(folder: Path, size_mb: int, files: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"repo_id": None, "title": "GGUF files", "files": []}
    per = size_mb * 2**20 // files
    names = [f"Bench-{q}.gguf" for q in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "F16")][:files]
    (folder / "README.md").write_text("---\nlibrary_name: gguf\nlicense: mit\n---\n\n# bench\n")
    for name in names:
        p = folder / name
        if not p.is_file() or p.stat().st_size != per:
            with open(p, "wb") as f:
                for _ in range(per // (8 << 20)):
                    f.write(os.urandom(8 << 20))
                f.write(os.urandom(per % (8 << 20)))
    for p in sorted(folder.iterdir()):
        h = hashlib.sha256(p.read_bytes()).hexdigest()
        entry["files"].append({"path_in_repo": p.name, "size": p.stat().st_size, "sha256": h})
    return entry


def one(way: str, repo: str, work: Path) -> dict:
    """A single push, run in its own process by main()."""
    from huggingface_hub import HfApi

    from hf_push_tool.hub import check_token, push_set

    entry = json.loads((work / "entry.json").read_text())
    api = HfApi()
    t = time.perf_counter()
    if way == "upload_folder":
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(work / "set"))
        rec = {}
    else:
        local = {f["path_in_repo"]: work / "set" / f["path_in_repo"] for f in entry["files"]}
        check_token(api, lambda m: None)
        rec = push_set(
            api,
            {**entry, "repo_id": repo},
            local,
            private=False,
            retry={"attempts": 3, "wait": 1.0},
            log=lambda m: None,
        )
    return {"seconds": time.perf_counter() - t, "sent": rec.get("sent")}


def main() -> int:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one(sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--work", default="bench-work/push")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.work).absolute()
    from servers.hub import HubServer

    entry = make_set(work / "set", args.size_mb, args.files)
    # the server keeps what it receives in memory-backed storage when there is some: the bench measures
    # the client's path, not the writeback of this machine's disk
    shm = Path("/dev/shm")
    storage = Path(tempfile.mkdtemp(prefix="bench-hub-", dir=shm if shm.is_dir() else work))
    with HubServer(storage, tokens={TOKEN: {"user": "alice", "orgs": [], "role": "write"}}) as hub:
        env = {**os.environ, **hub.client_env(TOKEN), "HF_HOME": str(work / "hf-home")}
        (work / "entry.json").write_text(json.dumps(entry))

        def timed(way: str, repo: str) -> dict:
            """One push in a fresh process (the client must not share the server's interpreter lock);
            the time is taken inside it, after the imports. The server's stored objects are removed and
            dirty pages flushed first, so neither way pays for the other's writeback or replaced files."""
            for p in storage.rglob("*"):  # each push stores its objects anew, as on a first upload
                if p.is_file() and p.stat().st_size > 1 << 20:
                    p.unlink()
            os.sync()
            proc = subprocess.run(
                [sys.executable, __file__, "--one", way, repo, str(work)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return json.loads(proc.stdout)

        rows = []
        for run in range(args.runs):
            timings = {}
            order = ["upload_folder", "hf-push-tool"]
            for way in order if run % 2 == 0 else order[::-1]:
                timings[way] = timed(way, f"alice/bench-{way.replace('_', '-')}-{run}")["seconds"]
            rows.append(timings | {"ratio": timings["hf-push-tool"] / timings["upload_folder"]})
            print(
                f"run {run + 1}: upload_folder {timings['upload_folder']:.2f} s, hf-push-tool "
                f"{timings['hf-push-tool']:.2f} s, ratio {rows[-1]['ratio']:.3f}",
                file=sys.stderr,
            )
        hub.reset_stats()
        again = timed("hf-push-tool", "alice/bench-hf-push-tool-0")
        repush_s = again["seconds"]
        stats = hub.stats
    shutil.rmtree(storage, ignore_errors=True)
    median = statistics.median(r["ratio"] for r in rows)
    result = {
        "size_bytes": sum(f["size"] for f in entry["files"]),
        "files": len(entry["files"]),
        "runs": rows,
        "median_ratio": median,
        "ratio_target": 1.10,
        "ratio_pass": median <= 1.10,
        "repush": {
            "seconds": repush_s,
            "lfs_bytes": stats["lfs_bytes"],
            "commit_bytes": stats["commit_bytes"],
            "request_bytes": stats["bytes_received"],
            "new_commits": sum(stats["commits"].values()),
            "sent": again["sent"],
        },
        "repush_pass": stats["lfs_bytes"] == 0 and stats["commit_bytes"] == 0 and not again["sent"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    size = result["size_bytes"] / 2**20
    print(
        f"set: {result['files']} files (README included), {size:.0f} MiB; {args.runs} runs, alternating order, "
        "each push in its own process"
    )
    print(f"{'run':<5}{'upload_folder s':>17}{'hf-push-tool s':>16}{'ratio':>8}")
    for i, r in enumerate(rows, 1):
        print(f"{i:<5}{r['upload_folder']:>17.2f}{r['hf-push-tool']:>16.2f}{r['ratio']:>8.3f}")
    print(f"median ratio {median:.3f} (target <= 1.10): {'PASS' if result['ratio_pass'] else 'MISS'}")
    rp = result["repush"]
    print(
        f"re-push unchanged: {rp['seconds']:.2f} s, file bytes sent {rp['lfs_bytes'] + rp['commit_bytes']} "
        f"(LFS {rp['lfs_bytes']}, commit {rp['commit_bytes']}), all requests {rp['request_bytes']} B, "
        f"new commits {rp['new_commits']}: {'PASS' if result['repush_pass'] else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
