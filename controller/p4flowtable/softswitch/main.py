"""`p4ft switch`: the embedded target as a process, like simple_switch_grpc."""

from __future__ import annotations

import logging
import signal
import threading
from ..tls import TlsConfigError, TlsFiles, plaintext_allowed
from .ports import Ports
from .server import SoftSwitchServer, serve

log = logging.getLogger("p4ft.switch")


def main(args) -> int:
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    try:
        if tls.enabled:
            credentials = tls.server_credentials()
        else:
            credentials = None
            plaintext_allowed(args.grpc_addr, args.insecure, "served on")
    except TlsConfigError as e:
        log.error("%s", e)
        return 2
    server_impl = SoftSwitchServer(args.device_id, args.cpu_port)
    try:
        ports = Ports(args.interface, server_impl.receive)
    except (ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    server_impl.ports = ports
    try:
        grpc_server = serve(server_impl, args.grpc_addr, credentials=credentials)
    except OSError as e:
        log.error("%s", e)
        ports.close()
        return 2
    ports.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("p4ft switch: device %d, ports %s, cpu port %d, P4Runtime on %s (%s)", args.device_id,
             ", ".join(f"{p}@{n}" for p, n in ports.names.items()) or "none", args.cpu_port, args.grpc_addr,
             "TLS, client certificates required" if tls.ca else "TLS" if tls.enabled else "plaintext")
    while not stop.wait(0.1):
        server_impl.idle_scan()
    grpc_server.stop(1)
    ports.close()
    return 0
