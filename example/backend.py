"""A small example backend for sp00ky.yml: answers the routes of example/openapi.yml.

Standard library only, so `python3 example/backend.py` runs anywhere. It checks the bearer token,
prints each job it receives, and answers 200; a payload with `"id": "flaky"` fails the first call
for each job (503), so a retry from the dashboard or `jobs retry` can be seen to succeed.
"""

import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("EXAMPLE_BACKEND_TOKEN", "change-me")
HOST = os.environ.get("EXAMPLE_BACKEND_HOST", "127.0.0.1")
PORT = int(os.environ.get("EXAMPLE_BACKEND_PORT", "3660"))
ROUTES = [re.compile(r"^/spookify$"), re.compile(r"^/threads/[^/]+/summary$")]
FAILED_ONCE = set()


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.headers.get("authorization") != f"Bearer {TOKEN}":
            self.reply(401, {"error": "wrong token"})
            return
        if not any(route.match(self.path) for route in ROUTES):
            self.reply(404, {"error": "no such route"})
            return
        length = int(self.headers.get("content-length") or 0)
        payload = json.loads(self.rfile.read(length) or b"null")
        job = self.headers.get("idempotency-key")
        attempt = self.headers.get("x-sp00ky-attempt")
        print(f"job {job} attempt {attempt}: {self.path} {json.dumps(payload)}", flush=True)
        if isinstance(payload, dict) and payload.get("id") == "flaky" and job not in FAILED_ONCE:
            FAILED_ONCE.add(job)
            self.reply(503, {"error": "flaky: the first call for each job fails"})
            return
        self.reply(200, {"ok": True})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    print(f"example backend listening on http://{HOST}:{PORT}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
