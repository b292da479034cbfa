"""Before/after figures for issue 11 (BENCHMARKS.md, "Hostile clients"): the issue's example
query (each attacker's own killmails, 200 killmails a page) under 1, 16 and 20 aliases, with
the statements it ran (PostgreSQL's commit count of the database, so other sessions add a few),
then documents nested 100, 300 and 700 brackets deep, and a neighbour's query after them.

Usage: python3 scripts/hostile-figures.py BASE_URL... (a server on the database
killreport_hardening_bench, holding `queue import` of an EVE Ref day)."""
import json, subprocess, sys, time, urllib.request

DB = "killreport_hardening_bench"

def commits():
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
        f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{DB}'"],
        capture_output=True, text=True).stdout.strip()
    return int(out)

def post(base, query, timeout=600):
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(base + "/graphql", body, {"content-type": "application/json"})
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
        return json.loads(text), time.time() - started
    except Exception as error:  # the server died, or timed out
        return {"failed": repr(error)}, time.time() - started

def example(n):
    page = "killmails(first: 200) { edges { node { attackers { character { killmails(first: 0) { edges { cursor } } } } } } }"
    return "{ " + " ".join(f"a{i}: {page}" for i in range(n)) + " }"

def summary(answer):
    if "failed" in answer:
        return answer["failed"][:100]
    if answer.get("errors"):
        e = answer["errors"][0]
        return f"refused: {e['message'][:90]} ({(e.get('extensions') or {}).get('code')})"
    return "answered: %d aliases" % len(answer["data"])

for base in sys.argv[1:]:
    for n in (1, 16, 20):
        time.sleep(2)
        before = commits()
        answer, took = post(base, example(n))
        time.sleep(2)  # statistics are flushed within a second
        print(f"{base} example x{n}: {took:.2f} s, {commits() - before} statements, {summary(answer)}")
    for depth in (100, 300, 700):
        deep = '{ killmails(filter: {characterIds: ' + "[" * depth + '"1"' + "]" * depth + '}) { edges { cursor } } }'
        answer, took = post(base, deep, timeout=60)
        print(f"{base} {depth} nested brackets: {took:.3f} s, {summary(answer)[:120]}")
    answer, took = post(base, "{ killmails(first: 1) { edges { cursor } } }", timeout=10)
    print(f"{base} then a neighbour's query: {took:.3f} s, {summary(answer)}")
