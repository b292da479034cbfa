"""600 slow clients per server (200 trickling a header byte every 5 s, 200 POST headers
promising a body that never comes, 200 sending nothing); how many each server still holds
after 10, 35 and 45 s (BENCHMARKS.md, "Hostile clients").

Usage: ulimit -n 4096; python3 scripts/slow-clients.py PORT... (servers on 127.0.0.1)."""
import asyncio, sys, time

async def trickle(host, port, held):
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"); await w.drain()
    try:
        while True:
            await asyncio.sleep(5)
            w.write(b"a"); await w.drain()
            if r.at_eof(): break
            try:
                data = await asyncio.wait_for(r.read(1), 0.01)
                if data == b"": break
            except asyncio.TimeoutError:
                pass
    except Exception:
        pass
    held["trickle"] -= 1

async def bodiless(host, port, held):
    r, w = await asyncio.open_connection(host, port)
    w.write(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"); await w.drain()
    try:
        while await r.read(4096):
            pass
    except Exception:
        pass
    held["bodiless"] -= 1

async def silent(host, port, held):
    r, w = await asyncio.open_connection(host, port)
    try:
        while await r.read(4096):
            pass
    except Exception:
        pass
    held["silent"] -= 1

async def main():
    results = {}
    tasks = []
    for port in map(int, sys.argv[1:]):
        held = {"trickle": 200, "bodiless": 200, "silent": 200}
        results[port] = held
        for kind in (trickle, bodiless, silent):
            for _ in range(200):
                tasks.append(asyncio.create_task(kind("127.0.0.1", port, held)))
    started = time.time()
    for check in (10, 35, 45):
        await asyncio.sleep(check - (time.time() - started))
        for port, held in results.items():
            print(f"port {port} after {check} s: still held {dict(held)} ({sum(held.values())} of 600)", flush=True)
    for t in tasks: t.cancel()

asyncio.run(main())
