"""Start the web server and a Celery worker together; Ctrl-C stops both."""
import os
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from evalsite.processes import stop_groups


class Command(BaseCommand):
    help = "Run the web server and a Celery worker together (Ctrl-C stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default=os.environ.get("EVALSITE_ADDR", "127.0.0.1:8000"))
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "2")))
        parser.add_argument("--gunicorn", action="store_true", help="gunicorn instead of Django's runserver")

    def handle(self, *args, **o):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("TORCH_THREADS_PER_PROCESS", str(max(1, (os.cpu_count() or 1) // max(1, o["concurrency"]))))
        if o["gunicorn"]:
            web = [sys.executable, "-m", "gunicorn", "evalsite.wsgi", "-b", o["addr"], "-w", "2", "--threads", "4"]
        else:
            web = [sys.executable, "manage.py", "runserver", o["addr"], "--noreload"]
        worker = [sys.executable, "-m", "celery", "-A", "evalsite", "worker", "-l", "info",
                  "-c", str(o["concurrency"]), "-n", "demo@%h", "-Q", settings.CELERY_TASK_DEFAULT_QUEUE]
        procs = [subprocess.Popen(cmd, cwd=settings.BASE_DIR, env=env, start_new_session=True) for cmd in (web, worker)]
        self.stdout.write(self.style.SUCCESS(
            f"\nWeb: http://{o['addr']}/   admin: http://{o['addr']}/admin/   (broker: "
            f"{settings.CELERY_BROKER_URL.split('@')[-1]})\nCtrl-C stops the web server and the worker.\n"
        ))
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            self.stderr.write("a process exited; stopping the other")
        except KeyboardInterrupt:
            self.stdout.write("\nstopping...")
        finally:
            stop_groups(procs, grace=15)  # SIGTERM both, SIGKILL what is left after 15 s
        return None
