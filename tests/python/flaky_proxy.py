"""A faulty front for an engine, for testing Ember's retries against a served teacher.

    python flaky_proxy.py UPSTREAM_URL EVERY [MODES]

Listens on 127.0.0.1 (a free port, printed as `listening on http://127.0.0.1:PORT`) and forwards
every POST to UPSTREAM_URL, except that every EVERY-th request fails, in turn, in each of MODES
(comma-separated; default `500,drop,json,slow`): `500` answers HTTP 500, `503` HTTP 503, `drop` closes
the connection without an answer, `json` answers 200 with a body that is not JSON, `slow` waits 3 s
before answering (past a client deadline of 1 s). EVERY = 1 fails every request. Prints one line per
injected fault to stderr.
"""
import http.server, sys, time, threading, urllib.error, urllib.request

upstream, every = sys.argv[1].rstrip("/"), int(sys.argv[2])
modes = (sys.argv[3] if len(sys.argv) > 3 else "500,drop,json,slow").split(",")
lock, count = threading.Lock(), [0, 0]


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        with lock:
            count[0] += 1
            fault = None
            if count[0] % every == 0:
                fault = modes[count[1] % len(modes)]
                count[1] += 1
        if fault:
            print(f"fault {fault} on request {count[0]}", file=sys.stderr, flush=True)
        if fault in ("500", "503"):
            return self.answer(int(fault), b'{"error": {"message": "injected fault"}}')
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "json":
            return self.answer(200, b'{"choices": [ truncated')
        if fault == "slow":
            time.sleep(3)
        req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        try:
            self.answer(status, data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
