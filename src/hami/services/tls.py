"""A server TLS context whose certificate is reloaded when its files change (cert-manager rotation).

Loading a new chain into the same SSLContext applies to every handshake after it, so the listening socket
never restarts and open connections are not dropped. A half-written pair (the key updated, the cert not
yet) fails to load; the old chain stays in use and the next check tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

log = logging.getLogger(__name__)


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class ReloadingTLS:
    """`context` serves anyone (the webhook: the API server verifies us); `client_auth_context`, made when a
    client CA is given, also requires a client certificate signed by it (the extender: mutual TLS with the
    certificate of kube-scheduler's extender tlsConfig). Both get the reloaded certificate."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = _server_context()
        self.client_auth_context: ssl.SSLContext | None = None
        if client_ca_file is not None:
            self.client_auth_context = _server_context()
            self.client_auth_context.verify_mode = ssl.CERT_REQUIRED
            self.client_auth_context.load_verify_locations(cafile=client_ca_file)
        self._stamp = self._files_stamp()
        for context in self._contexts():
            context.load_cert_chain(cert_file, key_file)  # fail fast at start on a bad pair
        self.reloads = 0

    def _contexts(self) -> list[ssl.SSLContext]:
        return [c for c in (self.context, self.client_auth_context) if c is not None]

    def _files_stamp(self) -> tuple[float, int, float, int]:
        c, k = os.stat(self.cert_file), os.stat(self.key_file)
        return (c.st_mtime, c.st_size, k.st_mtime, k.st_size)

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._files_stamp()
        except OSError as exc:
            log.warning("TLS files unreadable, keeping the current certificate: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            # Check the pair on a scratch context first: a failed load into the live one could leave it
            # with the new certificate and the old key.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_file, self.key_file)
            for context in self._contexts():
                context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            log.warning("new TLS certificate not loadable yet, keeping the current one: %s", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("reloaded TLS certificate from %s", self.cert_file)
        return True

    async def watch(self, interval_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()
