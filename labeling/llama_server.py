"""Start and stop llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on a GGUF file.

Plain Python. Used by the tests and bench/labeling_server to check the server backends against a
real third-party server; handy to serve a GGUF labeler on this machine too:

    server = LlamaServer("SmolLM2-135M-Instruct.Q4_1.gguf").start()   # http://127.0.0.1:<free port>/v1
    ...
    server.stop()

``--logits_all true`` is what makes it return log-probabilities (without it, it refuses any request
that asks for them). The server runs in its own process group, so ``stop``/``kill`` end all of it.
"""
import socket
import subprocess
import sys
import time
from pathlib import Path

from evalsite.processes import kill_group, stop_group


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, gguf, *, port=None, host="127.0.0.1", threads=2, n_ctx=2048, logits_all=True, logfile=None):
        self.gguf, self.host, self.threads, self.n_ctx, self.logits_all = Path(gguf), host, threads, n_ctx, logits_all
        self.port = port or free_port(host)
        self.logfile = Path(logfile) if logfile else None
        self.proc = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}/v1"

    def command(self):
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", self.host,
                "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                "--logits_all", "true" if self.logits_all else "false"]

    def start(self, timeout=120):
        """Start it and wait until it answers ``/v1/models``; a server that exits says why."""
        import requests

        if self.logfile:
            self.logfile.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.logfile, "ab")
        else:
            out = subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.logfile:
                out.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"llama.cpp's server did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars=3000):
        if self.logfile and self.logfile.exists():
            return self.logfile.read_text(errors="replace")[-chars:]
        return "(no log file)"

    def kill(self):
        """SIGKILL its whole process group, as a crash would."""
        if self.proc:
            kill_group(self.proc)

    def stop(self):
        """SIGTERM its process group; SIGKILL what is left after 10 s."""
        if self.proc:
            stop_group(self.proc, grace=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
