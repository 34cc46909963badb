"""A TLS front for a plain-HTTP engine, for testing Ember's https:// remote teachers.

    python https_proxy.py CERT KEY UPSTREAM_URL

Listens on 127.0.0.1 (a free port, printed as `listening on https://127.0.0.1:PORT`) with the
given certificate, and forwards every POST/GET (path, body, status) to UPSTREAM_URL.
"""
import http.server, ssl, sys, urllib.error, urllib.request

cert, key, upstream = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/")


class Proxy(http.server.BaseHTTPRequestHandler):
    def forward(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        req = urllib.request.Request(upstream + self.path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.forward("POST")

    def do_GET(self):
        self.forward("GET")

    def log_message(self, *a):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"listening on https://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
