"""A webhook sink in aiohttp: answers every POST after --delay-ms with an empty 200, counts requests per
Idempotency-Key (GET /received -> {total, distinct}). The fallback when Downstream.Receiver is not built."""
import argparse
import asyncio

from aiohttp import web


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=int, default=50)
    a = p.parse_args()
    counts = {}

    async def webhook(request):
        await request.read()
        key = request.headers.get("Idempotency-Key", "")
        counts[key] = counts.get(key, 0) + 1
        await asyncio.sleep(a.delay_ms / 1000)
        return web.Response(status=200)

    async def received(_):
        return web.json_response({"total": sum(counts.values()), "distinct": len(counts)})

    app = web.Application()
    app.add_routes([web.post("/webhook", webhook), web.get("/received", received)])
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
