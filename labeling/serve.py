"""A small OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions`` server over a local
model (plain Python).

It answers what :class:`labeling.backends.ServerBackend` and :class:`~labeling.backends.ChatBackend`
ask (``max_tokens``, ``logprobs``/``top_logprobs``, ``temperature``, ``n``, ``usage``) with the
local backend's own numbers, so the server backends can be checked end to end against a real
HTTP server to float precision, on any Hugging Face folder (the tests' tiny models included).
To serve a labeler to others, llama.cpp's or vLLM's server is faster (see the README).
``logprobs=False`` imitates a server that never returns log-probabilities; ``fail_first=N``
answers the first N requests with HTTP 503 (to exercise retries); ``rate_limit_first=N`` answers
them with HTTP 429 and ``Retry-After: retry_after`` (to exercise rate limits).

    python -m labeling.serve var/models/SmolLM2-135M-Instruct --port 8011
"""
import argparse
import json
import math
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CompletionServer:
    def __init__(self, backend, host="127.0.0.1", port=0, logprobs=True, fail_first=0, model_name="local",
                 rate_limit_first=0, retry_after="1"):
        self.backend = backend
        self.logprobs = logprobs
        self.fail_first = fail_first
        self.rate_limit_first = rate_limit_first
        self.retry_after = retry_after
        self.model_name = model_name
        self.requests = 0
        self.bodies = []  # every request's JSON, in order of arrival
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, payload, headers=()):
                body = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server._lock:
                    server.requests += 1
                    n_req = server.requests
                if n_req <= server.rate_limit_first:
                    return self._send(429, {"error": {"message": "rate limit reached"}},
                                      [("Retry-After", server.retry_after)])
                if n_req <= server.rate_limit_first + server.fail_first:
                    return self._send(503, {"error": {"message": "warming up"}})
                route = self.path.rstrip("/")
                chat = route in ("/v1/chat/completions", "/chat/completions")
                if not chat and route not in ("/v1/completions", "/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    return self._send(400, {"error": {"message": "body is not JSON"}})
                with server._lock:
                    server.bodies.append(req)
                field = "messages" if chat else "prompt"
                if field not in req:
                    return self._send(400, {"error": {"message": f"'{field}' is required"}})
                try:
                    return self._send(200, server.chat(req) if chat else server.complete(req))
                except Exception as e:  # report, do not hang the client
                    return self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = None

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def complete(self, req):
        prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
        max_tokens = int(req.get("max_tokens", 16))
        top_k = req.get("logprobs")
        temperature = float(req.get("temperature", 1.0) or 0.0)
        n = int(req.get("n", 1))
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for text in prompts:
            usage["prompt_tokens"] += len(self.backend.encode(text))
            lp_payload, first_text = None, None
            if top_k is not None or max_tokens <= 1:
                lp_payload, first_text = self._first_token(text, int(top_k or 1))
            if max_tokens <= 1 and temperature == 0:
                outs = [first_text] * n
            else:
                outs = self.backend.generate([text], max_tokens, temperature=temperature, n=n,
                                             seed=int(req.get("seed", 0) or 0))[0]
            for out in outs:
                usage["completion_tokens"] += max(1, len(self.backend.tokenizer.encode(out, add_special_tokens=False)))
                choices.append({"index": len(choices), "text": out, "finish_reason": "length",
                                "logprobs": lp_payload if self.logprobs else None})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                "model": req.get("model") or self.model_name, "choices": choices, "usage": usage}

    def chat(self, req):
        """A chat completion: the messages in the tokenizer's chat template, the reply not started.
        With ``logprobs``, each of the first ``max_tokens`` positions of the greedy reply gets its
        ``top_logprobs`` alternatives (as OpenAI's API answers)."""
        tokenizer = self.backend.tokenizer
        text = tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
        max_tokens = int(req.get("max_tokens") or 16)
        temperature = float(req.get("temperature", 1.0) or 0.0)
        n = int(req.get("n") or 1)
        usage = {"prompt_tokens": len(self.backend.encode(text)), "completion_tokens": 0}
        if req.get("logprobs"):
            content, reply = [], text
            for _ in range(max_tokens):
                payload, token = self._first_token(reply, int(req.get("top_logprobs") or 0) or 1)
                top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in payload["top_logprobs"][0].items()]
                content.append({"token": token, "logprob": payload["token_logprobs"][0], "top_logprobs": top})
                reply += token
            outs = ["".join(c["token"] for c in content)] * n
            logprobs = {"content": content} if self.logprobs else None
        else:
            outs = self.backend.generate([text], max_tokens, temperature=temperature, n=n,
                                         seed=int(req.get("seed", 0) or 0))[0]
            logprobs = None
        choices = []
        for out in outs:
            usage["completion_tokens"] += max(1, len(tokenizer.encode(out, add_special_tokens=False)))
            choices.append({"index": len(choices), "message": {"role": "assistant", "content": out},
                            "finish_reason": "length", "logprobs": logprobs})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model") or self.model_name, "choices": choices, "usage": usage}

    def _first_token(self, text, top_k):
        import torch

        seq = self.backend.encode(text)
        row = self.backend.last_logprobs([seq])[0]
        values, ids = torch.topk(row, min(row.numel(), max(1, top_k)))
        top = {}
        for v, i in zip(values.tolist(), ids.tolist()):
            tok = self.backend.tokenizer.decode([i])
            top[tok] = float(v) if tok not in top else float(math.log(math.exp(top[tok]) + math.exp(v)))
        best = self.backend.tokenizer.decode([ids[0].item()])
        return {"tokens": [best], "token_logprobs": [float(values[0])], "top_logprobs": [top], "text_offset": [0]}, best

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="completion-server")
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main():
    from .backends import LocalBackend, LocalBackendConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    backend = LocalBackend(LocalBackendConfig(args.model_dir, threads=args.threads, chat_template="off"))
    server = CompletionServer(backend, args.host, args.port, model_name=backend.name)
    print(f"serving {args.model_dir} at {server.url}/completions and {server.url}/chat/completions")
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
