"""Benchmark: 50 simulated annotators against gunicorn + PostgreSQL doing next-item + submit.

Creates a throwaway PostgreSQL database, migrates it, seeds a round large enough not to run
out, starts gunicorn on loopback, and lets the annotators (threads in a few client processes)
work for ``--seconds``. A share of submissions is sent twice with the same key (a retry), which
must be stored once. Prints requests/s and p50/p99 latency per endpoint, then checks the
database (see check_database): acknowledged submissions that are missing (lost), answers
stored twice (doubled) and items beyond their overlap. The baseline is the login page served
by the same server in the same run (a plain Django page with a session), so ``next_vs_login``
is a ratio that means the same on any machine.

A request that fails (an HTTP error, a refused connection, a page without its form) is counted
in ``errors``; the annotator waits a moment and goes on, as a person would reload. The run
fails (exit status 1) on any error, loss, double or item over its overlap.

    bench/annotate [--seconds 60] [--annotators 50] [--workers N] [--think-seconds S] [--keep-db]

With the default --think-seconds 0 every annotator asks for its next item the moment the
last request is answered, so latency is about annotators / throughput (Little's law): the
run measures how many requests/s the machine serves. --think-seconds S paces them like
people (real annotators spend tens of seconds per item) and measures latency at that load.
"""
import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evalsite.processes import stop_group  # noqa: E402  (after the path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def redis_reachable(url):
    if not url:
        return False
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means "run without Redis"
        return False


def admin_conn(base_url):
    import psycopg

    return psycopg.connect(base_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)


# --- client processes -----------------------------------------------------------------------

# How long an annotator waits after a failed request before going on: a server that fails fast
# is not asked again at full speed, and the annotator keeps working (and counting errors).
ERROR_PAUSE_SECONDS = 0.5


def client_process(base_url, round_id, sessions, seed, deadline, retry_every, think_seconds, queue):
    from tests.scripted_annotator import Annotator

    bots = [Annotator(base_url, s, round_id, seed=seed * 1000 + i) for i, s in enumerate(sessions)]

    def work(bot, k):
        n = 0
        while time.time() < deadline:
            errors_before = len(bot.errors)  # next_item() and submit() record HTTP errors there
            try:
                page = bot.next_item()
                if page is None and len(bot.errors) == errors_before:
                    # The round's "done" page: it was too small for the run.
                    bot.errors.append("ran out of items")
                    return
                if page is not None:
                    data = bot.answer(page)
                    if think_seconds:
                        time.sleep(bot.rng.uniform(0.5, 1.5) * think_seconds)  # reading and ranking
                    bot.submit(page, data)
                    n += 1
                    if retry_every and n % retry_every == k % retry_every:
                        bot.submit(page, data)  # a retry of the same submission: must be stored once
            except Exception as e:  # noqa: BLE001 - reported, not fatal for this or the other annotators
                bot.errors.append(f"{type(e).__name__}: {e}")
            if len(bot.errors) > errors_before:
                time.sleep(max(0.0, min(ERROR_PAUSE_SECONDS, deadline - time.time())))

    threads = [threading.Thread(target=work, args=(b, i)) for i, b in enumerate(bots)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    queue.put({
        "cpu": time.process_time(),  # this process, all its threads
        "next": [x for b in bots for x in b.timings["next"]],
        "submit": [x for b in bots for x in b.timings["submit"]],
        "acknowledged": [key for b in bots for _, key in b.acknowledged],
        "errors": [e for b in bots for e in b.errors],
    })


def baseline_process(base_url, sessions, deadline, queue):
    from tests.scripted_annotator import Annotator

    times, errors = [], []

    def work(s):
        bot = Annotator(base_url, s, round_id=0)  # the same HTTP client as the annotators
        while time.time() < deadline:
            t = time.perf_counter()
            try:
                status = bot.request("GET", "/login/")[0]
                error = None if status == 200 else f"login page: HTTP {status}"
            except Exception as e:  # noqa: BLE001 - counted like the annotators' errors
                error = f"login page: {type(e).__name__}: {e}"
            times.append(time.perf_counter() - t)
            if error:
                errors.append(error)
                time.sleep(max(0.0, min(ERROR_PAUSE_SECONDS, deadline - time.time())))

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    [t.start() for t in threads]
    [t.join() for t in threads]
    queue.put({"times": times, "errors": errors})


def cpu_seconds(pids):
    """User + system CPU seconds used so far by these processes (processes gone since count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def server_pids(server):
    import psutil

    return [server.pid] + [c.pid for c in psutil.Process(server.pid).children(recursive=True)]


def postgres_pids():
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def check_database(round_id, acknowledged, overlap):
    """What the database holds for the round, against the submissions the server acknowledged.

    ``lost``: acknowledged submissions (their keys) with no live answer. ``doubled``: answers
    stored beyond the first for one annotator and item, live or withdrawn (the benchmark never
    undoes), whether under two assignments, as two answers to one assignment, or one submission
    stored again under another id: each is an item answered twice. ``over_overlap``: items with
    more live answers than the round's overlap. ``unacknowledged``: live answers to submissions
    whose acknowledgement never reached the client (a request that failed after the answer was
    stored).
    """
    from django.db.models import Count

    from evalsite.humaneval.models import Ranking

    answers = Ranking.objects.filter(round_id=round_id)
    live = answers.filter(withdrawn_at__isnull=True)
    stored = set(live.values_list("idempotency_key", flat=True))
    ack = set(acknowledged)
    per_annotator_item = answers.values("annotator_id", "item_id").annotate(n=Count("id")).values_list("n", flat=True)
    per_item = live.values("item_id").annotate(n=Count("id")).values_list("n", flat=True)
    return {
        "stored": len(stored),
        "lost": len(ack - stored),
        "doubled": sum(n - 1 for n in per_annotator_item if n > 1),
        "over_overlap": sum(1 for n in per_item if n > overlap),
        "unacknowledged": len(stored - ack),
    }


def run_clients(target, per_process_args, n_procs):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for args in per_process_args]
    [p.start() for p in procs]
    results = [q.get() for _ in procs]
    [p.join() for p in procs]
    return results


# --- main -----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2) * 2))
    ap.add_argument("--client-procs", type=int, default=max(1, min(4, (os.cpu_count() or 2))))
    ap.add_argument("--items", type=int, default=0, help="items in the round (default: enough for the run)")
    ap.add_argument("--retry-every", type=int, default=10, help="every Nth submission is sent twice")
    ap.add_argument("--think-seconds", type=float, default=0.0,
                    help="mean time an annotator spends on an item before submitting (default 0: a stress "
                         "test, each annotator sends its next request as soon as the last is answered)")
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--keep-db", action="store_true", help="keep the benchmark's database afterwards, to inspect")
    args = ap.parse_args()

    dbname = f"evalsite_bench_annotate_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    db_url = args.database_url.rsplit("/", 1)[0] + "/" + dbname
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evalsite.settings", "DATABASE_URL": db_url, "DEBUG": "0",
        "SECRET_KEY": "bench-" + uuid.uuid4().hex * 2, "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0", "SECURE_HSTS_SECONDS": "0", "STATIC_MANIFEST": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING", "CONN_MAX_AGE": "600",
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "memory://"),
        # As in production (docker-compose.yml): sessions cached in Redis. --redis-url "" runs without.
        "REDIS_URL": args.redis_url if redis_reachable(args.redis_url) else "",
    }
    with admin_conn(args.database_url) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    try:
        return measure(args, env, dbname)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 - Django may not be set up if migrate failed
            pass
        if args.keep_db:
            print(f"kept database {db_url}")
        else:
            with admin_conn(args.database_url) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def measure(args, env, dbname):
    server = None
    try:
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env,
                       cwd=ROOT, check=True)
        os.environ.update(env)
        import django

        django.setup()
        from django.db import connection

        from tests.humaneval_demo import make_annotators, make_round
        from tests.scripted_annotator import session_for

        overlap = 3
        n_items = args.items or max(300, int(args.seconds * 400 / overlap))
        users = make_annotators(args.annotators, prefix="bench")
        rnd = make_round(n_prompts=n_items, overlap=overlap, name="bench round", question="both")
        sessions = [session_for(u) for u in users]
        connection.close()
        print(f"database {dbname}: {n_items} items × 3 policies, overlap {overlap}, "
              f"{args.annotators} annotators, {args.think_seconds:g} s per item before submitting "
              f"(setup {time.time() - t0:.1f}s)", flush=True)

        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            # --preload: the app is imported once, before the workers fork, so every worker serves
            # from the first request on and no import runs while the baseline is measured.
            [sys.executable, "-m", "gunicorn", "evalsite.wsgi:application", "-b", f"127.0.0.1:{port}",
             "-w", str(args.workers), "--preload", "--backlog", "2048", "--log-level", "warning", "--timeout", "60"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        import requests

        for _ in range(600):
            try:
                if requests.get(base_url + "/login/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError("gunicorn did not start")
        print(f"gunicorn: {args.workers} sync workers (--preload) on {base_url}; sessions in "
              f"{'Redis (cached_db)' if env['REDIS_URL'] else 'PostgreSQL'}", flush=True)

        groups = [sessions[i::args.client_procs] for i in range(args.client_procs)]
        # Warm-up, not measured: every worker opens its database connection and compiles its templates.
        warm_deadline = time.time() + 2
        warm = run_clients(baseline_process, [(base_url, g, warm_deadline) for g in groups], len(groups))
        # Baseline: the login page, same server, same concurrency.
        base_seconds = max(2.0, min(5.0, args.seconds / 6))
        deadline = time.time() + base_seconds
        srv_before = cpu_seconds(server_pids(server))
        base = run_clients(baseline_process, [(base_url, g, deadline) for g in groups], len(groups))
        login_times = [x for r in base for x in r["times"]]
        login_srv_cpu = cpu_seconds(server_pids(server)) - srv_before

        # PostgreSQL backends are forked per connection: count the ones that exist while measuring.
        pg_before = {pid: cpu_seconds([pid]) for pid in postgres_pids()}
        srv_before = cpu_seconds(server_pids(server))
        start = time.time()
        deadline = start + args.seconds
        results = run_clients(
            client_process,
            [(base_url, rnd.pk, g, i, deadline, args.retry_every, args.think_seconds) for i, g in enumerate(groups)],
            len(groups),
        )
        elapsed = time.time() - start
        srv_cpu = cpu_seconds(server_pids(server)) - srv_before
        pg_cpu = sum(cpu_seconds([pid]) - pg_before.get(pid, 0.0) for pid in postgres_pids())
        client_cpu = sum(r["cpu"] for r in results)
    finally:
        if server is not None:
            stop_group(server, grace=20)

    next_t = [x for r in results for x in r["next"]]
    submit_t = [x for r in results for x in r["submit"]]
    ack = {k for r in results for k in r["acknowledged"]}
    errors = [e for r in [*warm, *base, *results] for e in r["errors"]]
    db = check_database(rnd.pk, ack, overlap)
    lost, doubled, over = db["lost"], db["doubled"], db["over_overlap"]

    n_req = len(next_t) + len(submit_t)
    ms = lambda x: x * 1000  # noqa: E731
    print(f"\n{'endpoint':<10}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, t, secs in [("login*", login_times, base_seconds), ("next", next_t, elapsed), ("submit", submit_t, elapsed)]:
        print(f"{name:<10}{len(t):>10}{len(t) / secs:>10.1f}{ms(pct(t, 50)):>10.1f}{ms(pct(t, 90)):>10.1f}"
              f"{ms(pct(t, 99)):>10.1f}{ms(max(t, default=float('nan'))):>10.1f}")
    print("(* baseline: the login page on the same server at the same concurrency; "
          "'next' returns the item page itself, a new lease or the current one)")
    print(f"\n{n_req} requests in {elapsed:.1f}s = {n_req / elapsed:.1f} req/s; {len(ack)} submissions acknowledged, "
          f"{db['stored']} stored; lost {lost}, doubled {doubled}, items over overlap {over}, "
          f"stored but unacknowledged {db['unacknowledged']}; client errors {len(errors)}")
    per = lambda c: 1000 * c / max(1, n_req)  # noqa: E731
    print(f"CPU per request: server {per(srv_cpu):.2f} ms (login page: {1000 * login_srv_cpu / max(1, len(login_times)):.2f} ms), PostgreSQL {per(pg_cpu):.2f} ms, "
          f"clients {per(client_cpu):.2f} ms; machine capacity {os.cpu_count() * elapsed:.0f} CPU-s, "
          f"used {srv_cpu + pg_cpu + client_cpu:.0f} (server {srv_cpu:.0f}, PostgreSQL {pg_cpu:.0f}, clients {client_cpu:.0f})")
    if errors:
        from collections import Counter

        print(f"client errors ({len(errors)}, the most common):", dict(Counter(errors).most_common(5)))
    p99_next, p99_submit = ms(pct(next_t, 99)), ms(pct(submit_t, 99))
    verdict = "meets" if max(p99_next, p99_submit) < 250 else "misses"
    load = (f"annotators pausing {args.think_seconds:g} s per item" if args.think_seconds
            else "annotators that never pause (stress test)")
    print(f"target p99 < 250 ms: {verdict} with {args.annotators} {load} "
          f"(machine: {os.cpu_count()} CPUs, shared with whatever else runs)")
    print(f"RESULT rps={n_req / elapsed:.1f} p50_next_ms={ms(pct(next_t, 50)):.1f} p99_next_ms={p99_next:.1f} "
          f"p50_submit_ms={ms(pct(submit_t, 50)):.1f} p99_submit_ms={p99_submit:.1f} "
          f"next_vs_login={pct(next_t, 50) / pct(login_times, 50):.2f} lost={lost} doubled={doubled} "
          f"over_overlap={over} errors={len(errors)} server_cpu_ms_per_req={per(srv_cpu):.2f}")
    return 0 if lost == 0 and doubled == 0 and over == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
