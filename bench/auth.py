"""Accounts and access benchmark: what signing in, refreshing and the per-request access checks cost.

Starts its own embedded servers and one API process, then measures over HTTP:

- `login` (one argon2id verification at OWASP parameters, throttle bookkeeping, a new refresh-token family);
- `refreshSession` (hash lookup, rotation, new access token);
- an authenticated `{ me { id } }` (JWT check, one Redis round trip for revocations, the acting user's row);
- `{ cases { id myAccess } }` for a viewer with 50 cases shared with it, and the same list for their owner;
- throughput of authenticated reads with 16 requests in flight.

Run: .venv/bin/python bench/auth.py [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.cli import create_account
from aima.db.models import Role
from aima.testing.stack import local_aima

PASSWORD = "benchmark password"  # noqa: S105 - a throwaway account of the benchmark
LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken refreshToken } }"
REFRESH = "mutation($r: String!) { refreshSession(refreshToken: $r) { accessToken refreshToken } }"
SHARE = "mutation($c: ID!, $e: String!) { shareCase(caseId: $c, email: $e, role: VIEWER) { role } }"


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] = (
        await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    ).json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def timed(samples: int, call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Median and p95 in milliseconds of `samples` sequential calls (after two warm-up calls)."""
    for _ in range(2):
        await call()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


async def measure(base_url: str, samples: int) -> list[tuple[str, str]]:
    figures = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        owner = (await gql(client, LOGIN, {"e": "owner@example.org", "p": PASSWORD}))["login"]
        viewer = (await gql(client, LOGIN, {"e": "viewer@example.org", "p": PASSWORD}))["login"]
        for i in range(50):
            case = await gql(
                client, f'mutation {{ createCase(title: "Case {i}") {{ id }} }}', token=owner["accessToken"]
            )
            await gql(client, SHARE, {"c": case["createCase"]["id"], "e": "viewer@example.org"}, owner["accessToken"])

        median, p95 = await timed(20, lambda: gql(client, LOGIN, {"e": "login@example.org", "p": PASSWORD}))
        figures.append(("login (argon2id m=19 MiB, t=2)", f"median {median:.1f} ms, p95 {p95:.1f} ms"))

        refresh_token = owner["refreshToken"]

        async def refresh() -> None:
            nonlocal refresh_token
            refresh_token = (await gql(client, REFRESH, {"r": refresh_token}))["refreshSession"]["refreshToken"]

        median, p95 = await timed(samples, refresh)
        figures.append(("refreshSession", f"median {median:.1f} ms, p95 {p95:.1f} ms"))

        token = viewer["accessToken"]
        median, p95 = await timed(samples, lambda: gql(client, "{ me { id } }", token=token))
        figures.append(("authenticated { me { id } }", f"median {median:.1f} ms, p95 {p95:.1f} ms"))
        cases = "{ cases { id myAccess } }"
        median, p95 = await timed(samples, lambda: gql(client, cases, token=token))
        figures.append(("viewer: 50 shared cases with myAccess", f"median {median:.1f} ms, p95 {p95:.1f} ms"))
        median, p95 = await timed(samples, lambda: gql(client, "{ cases { id } }", token=owner["accessToken"]))
        figures.append(("owner: 50 own cases", f"median {median:.1f} ms, p95 {p95:.1f} ms"))

        total = samples * 5
        start = time.perf_counter()
        semaphore = asyncio.Semaphore(16)

        async def one() -> None:
            async with semaphore:
                await gql(client, "{ me { id } }", token=token)

        await asyncio.gather(*(one() for _ in range(total)))
        rate = total / (time.perf_counter() - start)
        figures.append(("authenticated reads, 16 in flight", f"{rate:.0f} requests/s"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    with local_aima("aima-bench-auth-") as aima:
        for email in ("owner@example.org", "viewer@example.org", "login@example.org"):
            asyncio.run(create_account(aima.settings, email, PASSWORD, Role.USER))
        base_url, _ = aima.start_api()
        figures = uvloop.run(measure(base_url, args.samples))
    print(f"accounts and access, one API process, {args.samples} sequential samples each")
    for name, value in figures:
        print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
