"""Arrow Flight transport alone: rows/s and CPU-seconds per 1,000 rows.

What a Spark task and a pool actor spend moving rows, with a model that does nothing:
N server processes run the engine's FlightService with an identity-like handler (one
float per row back, like a tiny predict function); M client processes stream their
share of the rows through the engine's PoolClient (least-loaded, window, order kept),
as Spark tasks do. No Ray, no Spark, no model: the transport's own cost.

CPU-seconds are counted over every client and server process (user + system), so
`16 / cpu_s_per_row` projects the rows/s a 16-core node sustains for the transport
(both sides on the same node, the worst case).

    python benchmarks/transport.py                       # 31 KB rows (JPEG-sized), 64 per batch
    python benchmarks/transport.py --row-bytes 8 --rows-per-batch 1024   # scalar rows
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pyarrow as pa

SERVER = r"""
import sys
import pyarrow as pa
from hybrid_infer.transport.server import FlightService

def handler(kind, options):
    def serve(batch):
        n = batch.num_rows
        return pa.RecordBatch.from_arrays([pa.array([0.5] * n, pa.float32())], names=["y"])
    return serve

server = FlightService(handler, token=sys.argv[1], host="127.0.0.1")
print(server.uri, flush=True)
server.serve()
"""


def run_client(args) -> tuple[int, float]:
    """Stream `batches` batches; returns (rows answered, CPU-seconds of this process)."""
    from hybrid_infer.transport.client import PoolClient
    from hybrid_infer.transport.protocol import PoolAddress, encode_header

    uris, token, batches, rows_per_batch, row_bytes, window = args
    column = pa.array([os.urandom(row_bytes) for _ in range(rows_per_batch)], pa.binary())
    batch = pa.RecordBatch.from_arrays([column], names=["content"])
    address = PoolAddress("bench", "grpc+tcp://127.0.0.1:1", tuple(uris), token)
    before = os.times()
    client = PoolClient(address, encode_header("infer"), max_in_flight=window)
    rows = sum(result.num_rows for result in client.map(batch for _ in range(batches)))
    after = os.times()
    return rows, (after.user - before.user) + (after.system - before.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--row-bytes", type=int, default=31_000)
    parser.add_argument("--rows-per-batch", type=int, default=64)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=2)
    parser.add_argument("--cores", type=int, default=16, help="node size to project to")
    args = parser.parse_args()

    import psutil

    token = os.urandom(16).hex()
    servers = [subprocess.Popen([sys.executable, "-c", SERVER, token], stdout=subprocess.PIPE,
                                text=True) for _ in range(args.servers)]
    try:
        uris = [server.stdout.readline().strip() for server in servers]
        server_procs = [psutil.Process(server.pid) for server in servers]

        def server_cpu() -> float:
            return sum(p.cpu_times().user + p.cpu_times().system for p in server_procs)

        batches = max(1, args.rows // args.rows_per_batch // args.clients)
        jobs = [(uris, token, batches, args.rows_per_batch, args.row_bytes,
                 args.max_in_flight)] * args.clients
        with multiprocessing.get_context("spawn").Pool(args.clients) as workers:
            workers.map(run_client, [(uris, token, 2, args.rows_per_batch, 8, 1)])  # warm-up
            cpu_before = server_cpu()
            started = time.perf_counter()
            results = workers.map(run_client, jobs)
            wall = time.perf_counter() - started
            servers_cpu = server_cpu() - cpu_before
    finally:
        for server in servers:
            server.kill()
            server.wait()
    rows = sum(r for r, _ in results)
    clients_cpu = sum(c for _, c in results)
    cpu = clients_cpu + servers_cpu
    per_1000 = cpu / rows * 1000
    report = {
        "rows": rows, "row_bytes": args.row_bytes, "rows_per_batch": args.rows_per_batch,
        "servers": args.servers, "clients": args.clients, "max_in_flight": args.max_in_flight,
        "wall_s": round(wall, 3), "rows_per_s": round(rows / wall),
        "mb_per_s": round(rows * args.row_bytes / wall / 1e6, 1),
        "cpu_s_clients": round(clients_cpu, 3), "cpu_s_servers": round(servers_cpu, 3),
        "cpu_s_per_1000_rows": round(per_1000, 4),
        f"projected_rows_per_s_{args.cores}_cores": round(args.cores / (cpu / rows)),
        "machine_cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
