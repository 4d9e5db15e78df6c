"""How many records per second the Reach sandbox accepts and applies in batches.

Starts the real sandbox (``python -m reach_sandbox``) on a free loopback port with a
throw-away state directory, POSTs ``--batches`` batch uploads of ``--batch-size`` customer
records with ``--concurrency`` requests in flight, waits until every batch is terminal, checks
they all succeeded and that the resources are there, and prints the figures and a final JSON
line. Bodies are serialised before the clock starts, so the figures are the sandbox's, not the
client's.

    .venv/bin/python bench/sandbox_throughput.py --batches 100 --batch-size 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from reach_sandbox.cli import server_command
from reach_sandbox.config import dev_config, write_sandbox_config

# Fresh per run: the sandbox only ever listens on loopback, but secrets stay out of the source.
PARTNER_SECRET = secrets.token_urlsafe(32)
ADMIN_TOKEN = secrets.token_urlsafe(24)
TENANT = ("tenant-bench", "merchant-bench")
READY_TIMEOUT_S = 30.0


def _records(batch: int, size: int, key_space: int) -> list[dict[str, Any]]:
    """Customer records shaped like the pipeline's: every default field, realistic sizes."""
    out = []
    for i in range(size):
        n = (batch * size + i) % key_space
        out.append(
            {
                "customerId": f"cust-{n:08d}",
                "email": f"customer{n}@example.com",
                "phone": f"+1555{n % 10_000_000:07d}",
                "firstName": f"First{n % 997}",
                "lastName": f"Last{n % 991}",
                "customerDetailUrl": f"https://shop.example.com/customers/{n}",
                "emailOptOut": n % 7 == 0,
                "smsOptOut": n % 3 == 0,
                "createdAt": "2024-03-01T12:00:00Z",
            }
        )
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = dev_config(PARTNER_SECRET, ADMIN_TOKEN, None, [TENANT])
    config_path = state / "sandbox.yaml"
    write_sandbox_config(config, config_path)
    port_file = state / "port"
    log = (state / "sandbox.log").open("wb")
    argv = server_command(config_path, state / "data", port_file=port_file, log_level="warning")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sandbox did not start; see {state / 'sandbox.log'}")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"


async def _run(base: str, bodies: list[bytes], concurrency: int, size: int) -> dict[str, Any]:
    now = int(time.time())
    token = jwt.encode(
        {"partnerId": "reach-sync-dev", "type": "partner", "iat": now, "exp": now + 3600},
        PARTNER_SECRET,
        algorithm="HS256",
    )
    headers = {
        "Authorization": f"Bearer {token}",
        "reach-tenant-id": TENANT[1],
        "Content-Type": "application/json",
    }
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    batch_ids: list[str] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:

        async def sender() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                sent = time.perf_counter()
                response = await client.post(
                    "/api/resources/customers/batch", content=body, headers=headers
                )
                latencies.append(time.perf_counter() - sent)
                if response.status_code != 202:
                    raise SystemExit(f"batch refused: {response.status_code} {response.text}")
                batch_ids.append(response.json()["data"]["batchId"])

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        accepted = time.perf_counter() - started
        idle = await client.post("/_admin/wait-idle", params={"timeoutSeconds": 600}, headers=admin)
        finished = time.perf_counter() - started
        if idle.status_code != 200:
            raise SystemExit(f"batches did not finish: {idle.text}")
        batches = (
            await client.get("/_admin/batches", params={"limit": 10000}, headers=admin)
        ).json()["batches"]
        counts = (await client.get("/_admin/counts", headers=admin)).json()
    statuses = {b["status"] for b in batches}
    successful = sum(b["progress"]["successfulRecords"] for b in batches)
    records = len(bodies) * size
    if statuses != {"success"} or successful != records:
        raise SystemExit(f"unexpected outcome: statuses={statuses} successful={successful}")
    return {
        "records": records,
        "batches": len(bodies),
        "accept_seconds": round(accepted, 3),
        "end_to_end_seconds": round(finished, 3),
        "accepted_records_per_s": round(records / accepted),
        "end_to_end_records_per_s": round(records / finished),
        "post_latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "post_latency_ms_max": round(max(latencies) * 1000, 1),
        "resources_stored": sum(sum(v.values()) for v in counts["resources"].values()),
        "versions_stored": counts["versions"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--key-space", type=int, default=0, help="distinct customers (default: all records new)"
    )
    args = parser.parse_args()
    key_space = args.key_space or args.batches * args.batch_size
    bodies = [
        orjson.dumps({"resources": _records(b, args.batch_size, key_space)})
        for b in range(args.batches)
    ]
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        proc, base = _start(Path(tmp))
        try:
            cpu_before, client_before = _cpu_seconds(proc.pid), time.process_time()
            result = asyncio.run(_run(base, bodies, args.concurrency, args.batch_size))
            cpu_after = _cpu_seconds(proc.pid)
            result["client_cpu_seconds"] = round(time.process_time() - client_before, 3)
            if cpu_before is not None and cpu_after is not None:
                result["server_cpu_seconds"] = round(cpu_after - cpu_before, 3)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result.update(
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        key_space=key_space,
        body_kib=round(statistics.mean(len(b) for b in bodies) / 1024, 1),
        cpus=os.cpu_count(),
    )
    print(
        f"records             {result['records']} in {result['batches']} batches of "
        f"{args.batch_size} ({result['body_kib']} KiB each), concurrency {args.concurrency}"
    )
    print(
        f"accepted (202s)     {result['accepted_records_per_s']:>9,} records/s  "
        f"in {result['accept_seconds']} s"
    )
    print(
        f"end to end          {result['end_to_end_records_per_s']:>9,} records/s  "
        f"in {result['end_to_end_seconds']} s (all batches terminal)"
    )
    print(
        f"POST latency        p50 {result['post_latency_ms_p50']} ms, "
        f"max {result['post_latency_ms_max']} ms"
    )
    if "server_cpu_seconds" in result:
        busy = result["server_cpu_seconds"] / result["end_to_end_seconds"]
        print(
            f"server CPU          {result['server_cpu_seconds']} s ({busy:.2f} cores busy); "
            f"client CPU {result['client_cpu_seconds']} s"
        )
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
