#!/usr/bin/env python3
"""A small static HTTP server for the urls examples and benchmarks, on 127.0.0.1 only.

Serves the files of DIR (GET only, with a Content-Length), each response after --delay seconds (a stand-in for
network and server latency, spent sleeping, not computing), one thread per connection. Writes the port it
listens on to --port-file once it is ready, then serves until killed.

Usage: scripts/serve.py DIR --port-file FILE [--delay SECONDS]
"""

import argparse
import http.server
import os
import socketserver
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    root = os.path.abspath(args.dir)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            name = self.path.split("?", 1)[0].lstrip("/")
            path = os.path.join(root, name)
            if args.delay > 0:
                time.sleep(args.delay)
            if "/" in name or not os.path.isfile(path):
                body = b"not found\n"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            size = os.path.getsize(path)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            with open(path, "rb") as f:
                # sendfile: the bytes go from the page cache to the socket without passing through Python.
                offset = 0
                while offset < size:
                    sent = os.sendfile(self.wfile.fileno(), f.fileno(), offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent

        def log_message(self, *_):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
