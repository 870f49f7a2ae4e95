"""Load test of ``longdoc serve``: micro-batching on against off, at several client concurrencies, on loopback.

The index: what ``longdoc index docs.jsonl -o idx/`` builds (the packaged MiniLM, float32, 256/64-token windows)
over a sample of this machine's man pages (``load_man_pages``, ``--pages-per-section`` per section, at most 50 per
source), built once through the CLI and kept under ``--cache`` (keyed by the page ids).

Two real servers, each ``longdoc serve IDX --port P`` in its own process (uvicorn, 127.0.0.1), one with
``--batching`` and one with ``--no-batching``, both up for the whole run. Clients: one asyncio task per
concurrent client (httpx ``AsyncClient``, one connection each), each posting one natural-language question
(``benchmarks/data/man_questions.jsonl``, taken in turn from one shared counter, so that requests in flight
together are different questions) to ``/search`` with ``k=10`` and the request's ``mode``, then the next as soon as
the answer arrives. Each cell (batching, concurrency, mode) runs a warm-up of ``--warmup`` requests per client,
then ``--seconds`` of measured requests; the on and off servers alternate cell by cell (and the order flips each
repeat), so that load from other processes on a shared machine falls on both alike.

    python benchmarks/serve_load.py                          # ~600 pages; the build takes a few minutes once
    python benchmarks/serve_load.py --concurrency 1,8,32 --modes dense,hybrid --seconds 20 --repeat 2

One JSON line per cell on stdout: requests, qps, p50/p90/p99 latency (ms, client side: from sending the request
to reading the whole answer), errors, and the server's ``/info`` batching counters over the cell (forwards,
queries encoded, mean queries per forward) and the server process's CPU seconds per request; then one
``summary`` line per (mode, concurrency): the best queries/s of each server and their ratio, the ratio of each
repeat's on and off cells (adjacent in time, so the least noisy), every p99 and the server CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_logging  # noqa: E402

logger = logging.getLogger("benchmarks.serve_load")
ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = Path(__file__).resolve().parent / "data" / "man_questions.jsonl"
CLI = [sys.executable, "-c", "import sys; from longdoc.cli import main; sys.exit(main())"]


# --------------------------------------------------------------------------------------------------- the index


def build_or_reuse(cache: Path, pages_per_section: int) -> tuple[Path, dict[str, Any]]:
    """The index directory of a man-page sample: ``longdoc index docs.jsonl -o idx`` once, then reused."""
    from longdoc.manpages import load_man_pages

    docs = load_man_pages(max_per_section=pages_per_section, max_per_source=50, seed=0)
    docs = docs.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
    key = hashlib.sha1(json.dumps(docs["doc_id"].to_list()).encode()).hexdigest()[:12]
    folder = cache / f"man-{pages_per_section}-{key}"
    index_dir = folder / "idx"
    facts = {"pages": docs.height, "chars": int(docs["text"].str.len_chars().sum())}
    if (folder / "built.json").is_file():
        facts.update(json.loads((folder / "built.json").read_text()))
        facts["reused"] = True
        return index_dir, facts
    folder.mkdir(parents=True, exist_ok=True)
    docs_path = folder / "docs.jsonl"
    docs.select(pl.col("doc_id").alias("id"), "text", pl.col("labels").alias("label")).write_ndjson(docs_path)
    logger.info("building the index of %d pages: longdoc index %s -o %s", docs.height, docs_path, index_dir)
    t0 = time.perf_counter()
    out = subprocess.run([*CLI, "index", str(docs_path), "-o", str(index_dir), "--json", "--quiet"],
                         check=True, capture_output=True, text=True, env=_env())
    built = json.loads(out.stdout)
    facts.update({"windows": built["windows"], "documents": built["documents"],
                  "build_s": round(time.perf_counter() - t0, 1), "reused": False})
    (folder / "built.json").write_text(json.dumps({k: facts[k] for k in ("windows", "documents", "build_s")}))
    return index_dir, facts


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# --------------------------------------------------------------------------------------------------- servers


class Server:
    """``longdoc serve INDEX --port P [--no-batching]`` in a subprocess."""

    def __init__(self, index_dir: Path, batching: bool, extra: list[str], log: Path, threads: int | None) -> None:
        with socket.socket() as sock:  # a free port (released just before the server binds it)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.batching = batching
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [*CLI, "serve", str(index_dir), "--host", "127.0.0.1", "--port", str(self.port), "--quiet",
               "--batching" if batching else "--no-batching", *extra]
        env = _env()
        if threads is not None:  # torch's intra-op pool and OpenBLAS (numpy) read these when they load
            env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        self.log = log
        with log.open("w") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def info(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}/info", timeout=30).json()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------------- clients


async def drive(url: str, questions: list[str], concurrency: int, mode: str, k: int, seconds: float,
                warmup: int, counter: list[int]) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop: warm-up requests, then ``seconds`` of measured ones."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []

    def next_question() -> str:
        counter[0] += 1
        return questions[counter[0] % len(questions)]

    async def one(client: httpx.AsyncClient) -> tuple[float, str | None]:
        body = {"query": next_question(), "k": k, "mode": mode}
        t0 = time.perf_counter()
        try:
            resp = await client.post(f"{url}/search", json=body)
            payload = resp.json()
            ok = resp.status_code == 200 and len(payload["results"][0]["hits"]) > 0
            err = None if ok else f"{resp.status_code}: {str(payload)[:200]}"
        except Exception as exc:  # noqa: BLE001 - counted as an error of the cell
            err = f"{type(exc).__name__}: {exc}"
        return time.perf_counter() - t0, err

    async def client_loop(stop_at: list[float], start: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as client:
            for _ in range(warmup):
                await one(client)
            ready[0] += 1
            if ready[0] == concurrency:
                stop_at[0] = time.perf_counter() + seconds
                start.set()
            await start.wait()
            while time.perf_counter() < stop_at[0]:
                dt, err = await one(client)
                latencies.append(dt)
                if err is not None:
                    errors.append(err)

    ready = [0]
    stop_at = [float("inf")]
    start = asyncio.Event()
    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop(stop_at, start) for _ in range(concurrency)))
    # measured from the start signal to the last answer (requests in flight at the deadline finish and count)
    wall = time.perf_counter() - (stop_at[0] - seconds) if stop_at[0] != float("inf") else time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(wall, 2), "qps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def run_cell(server: Server, questions: list[str], concurrency: int, mode: str, args: argparse.Namespace,
             counter: list[int], rep: int) -> dict[str, Any]:
    before, cpu0 = server.info()["batching"], server.cpu_seconds()
    out = asyncio.run(drive(server.url, questions, concurrency, mode, args.k, args.seconds, args.warmup, counter))
    after, cpu1 = server.info()["batching"], server.cpu_seconds()
    total = out["requests"] + args.warmup * concurrency
    forwards = after["forwards"] - before["forwards"]
    encoded = after["queries_encoded"] - before["queries_encoded"]
    rounds = None if after["rounds"] is None else after["rounds"] - before["rounds"]
    record = {"bench": "serve_load", "batching": server.batching, "concurrency": concurrency, "mode": mode,
              "repeat": rep, **out,
              "forwards": forwards, "queries_encoded": encoded,
              "queries_per_forward": round(encoded / forwards, 2) if forwards else None,
              "batcher_rounds": rounds,
              "server_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / total, 1) if total else None,
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages-per-section", type=int, default=100,
                        help="man pages per section (7 sections, at most 50 per source; default 100: ~630 pages)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "serve_load",
                        help="where the index is built once and reused (default .cache/serve_load)")
    parser.add_argument("--index", type=Path, default=None, help="serve this index instead of building one")
    parser.add_argument("--concurrency", default="1,8,32", help="client concurrencies (comma-separated)")
    parser.add_argument("--modes", default="dense,hybrid", help="search modes (comma-separated)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up requests per client before each cell")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over every cell (the on/off order flips)")
    parser.add_argument("--serve-args", default="", help="extra `longdoc serve` options for both servers")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS of both servers (default: "
                             "unset, torch and OpenBLAS use every core)")
    args = parser.parse_args()
    setup_logging()
    import torch

    emit({"bench": "serve_load", "what": "machine", **machine(), "load_avg_1m": round(os.getloadavg()[0], 2),
          "server_threads": args.server_threads or torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()}})
    if args.index is not None:
        index_dir, facts = args.index, {}
    else:
        index_dir, facts = build_or_reuse(args.cache, args.pages_per_section)
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]
    args.cache.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` stops the servers
    servers = {on: Server(index_dir, on, args.serve_args.split(), args.cache / f"server-{'on' if on else 'off'}.log",
                         args.server_threads)
               for on in (True, False)}
    try:
        for server in servers.values():
            server.wait_ready()
        info = servers[True].info()["index"]
        emit({"bench": "serve_load", "what": "index", "path": str(index_dir), **facts, "windows": info["windows"],
              "documents": info["documents"], "window": info["window"], "questions": len(questions)})
        counter = [0]
        records = []
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        modes = args.modes.split(",")
        for rep in range(args.repeat):
            for mode in modes:
                for concurrency in concurrencies:
                    order = (True, False) if (rep + concurrencies.index(concurrency)) % 2 == 0 else (False, True)
                    for on in order:
                        record = run_cell(servers[on], questions, concurrency, mode, args, counter, rep)
                        emit(record)
                        records.append(record)
        for mode in modes:
            for concurrency in concurrencies:
                cells = [r for r in records if r["mode"] == mode and r["concurrency"] == concurrency]
                on = [r for r in cells if r["batching"]]
                off = [r for r in cells if not r["batching"]]
                best_on, best_off = max(on, key=lambda r: r["qps"]), max(off, key=lambda r: r["qps"])
                # each repeat's on and off cells ran one after the other: their ratio is the least noisy one
                ratios = [round(a["qps"] / b["qps"], 2) for a, b in zip(on, off, strict=True)]
                emit({"bench": "serve_load", "what": "summary", "mode": mode, "concurrency": concurrency,
                      "qps_on": best_on["qps"], "qps_off": best_off["qps"],
                      "qps_ratio_on_off": round(best_on["qps"] / best_off["qps"], 2),
                      "qps_ratio_per_repeat": ratios,
                      "p99_ms_on": [r["p99_ms"] for r in on], "p99_ms_off": [r["p99_ms"] for r in off],
                      "all_qps_on": [r["qps"] for r in on], "all_qps_off": [r["qps"] for r in off],
                      "cpu_ms_per_request_on": [r["server_cpu_ms_per_request"] for r in on],
                      "cpu_ms_per_request_off": [r["server_cpu_ms_per_request"] for r in off]})
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
