"""Connects to 127.0.0.1:<port> and sends a message; also tries a public address."""
import socket
import sys

for host, port in (("127.0.0.1", int(sys.argv[1])), ("1.1.1.1", 80)):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"hello from the sandbox")
            print(f"{host}:{port} CONNECTED")
    except OSError as exc:
        print(f"{host}:{port} {type(exc).__name__} {exc.errno}")
