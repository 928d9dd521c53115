"""SMTP sink for licensync's mail tests.

A real SMTP server (aiosmtpd, from PyPI: `python3 -m pip install aiosmtpd`)
on a free loopback port. With --cert/--key it requires STARTTLS, and with
--user/--password it requires AUTH (offered only after STARTTLS when TLS is
on). It prints the port on the first line of stdout, stores every accepted
message as NNNN.eml plus NNNN.json (envelope, login, whether TLS was used)
in --spool before answering 250, and exits when its stdin closes, so a test
process that dies takes it along.

Recipients steer refusals: a local part starting with `reject-` gets
550 5.1.1, one starting with `defer-` gets 451 4.3.0. With --defer-first N
the first N messages are refused at DATA with 451 4.3.0 (a server that is
busy for a while, then accepts).

Faults for the fault tests (tests/faults.rs): --refuse-first N greets the
first N connections with 421 4.3.2 and closes them (a server refusing
service); --drop-after-data N stores the first N messages, then drops the
connection instead of answering 250 (the client cannot know it arrived);
--delay-data SECONDS waits that long before answering each DATA (a slow
server); --port P listens on that port instead of a free one (a server
that comes back where it was).

With --stats FILE it keeps FILE (JSON, replaced whole on every change)
up to date with the connections it accepted, the most it had open at
once, and the most messages it was handling at once (from the start of
DATA to its answer): how a test sees connection reuse and concurrency.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Stats:
    """Connections and concurrency, written to a JSON file when asked for."""

    def __init__(self, path):
        self.path = path
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.in_data = 0
        self.max_in_data = 0

    def connected(self):
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self.write()

    def disconnected(self):
        self.open -= 1
        self.write()

    def data_started(self):
        self.in_data += 1
        self.max_in_data = max(self.max_in_data, self.in_data)
        self.write()

    def data_ended(self):
        self.in_data -= 1
        self.write()

    def write(self):
        if not self.path:
            return
        with open(self.path + ".tmp", "w") as f:
            json.dump(
                {
                    "connections": self.connections,
                    "open": self.open,
                    "max_open": self.max_open,
                    "max_in_data": self.max_in_data,
                },
                f,
            )
        os.replace(self.path + ".tmp", self.path)


class Spool:
    def __init__(self, directory, defer_first=0, drop_after_data=0, delay_data=0.0, stats=None):
        self.directory = directory
        self.count = 0
        self.deferrals_left = defer_first
        self.drops_left = drop_after_data
        self.delay_data = delay_data
        self.stats = stats or Stats(None)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("reject-"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("defer-"):
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.stats.data_started()
        try:
            return await self.answer_DATA(server, session, envelope)
        finally:
            self.stats.data_ended()

    async def answer_DATA(self, server, session, envelope):
        if self.delay_data > 0:
            await asyncio.sleep(self.delay_data)
        if self.deferrals_left > 0:
            self.deferrals_left -= 1
            return "451 4.3.0 busy, try again later"
        self.count += 1
        base = os.path.join(self.directory, "%04d" % self.count)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        login = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": login,
            "tls": session.ssl is not None,
        }
        # The .json appears last and whole: a reader that sees it sees the .eml.
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        if self.drops_left > 0:
            # Stored, but the client never hears so: it must assume nothing.
            self.drops_left -= 1
            server.transport.abort()
            return "250 2.0.0 queued as %04d (never sent)" % self.count
        return "250 2.0.0 queued as %04d" % self.count


class Refusals:
    """How many more connections to refuse with a 421 greeting."""

    def __init__(self, count):
        self.left = count


def refusing(smtp_class, refusals):
    """An SMTP protocol class that greets the first connections with 421 and closes them."""

    class Refusing(smtp_class):
        def connection_made(self, transport):
            self._refused = refusals.left > 0
            if self._refused:
                refusals.left -= 1
                transport.write(b"421 4.3.2 Service not available, closing transmission channel\r\n")
                transport.close()
                return
            super().connection_made(transport)

        def connection_lost(self, exc):
            if self._refused:
                return
            super().connection_lost(exc)

    return Refusing


def counting(smtp_class, stats):
    """An SMTP protocol class that reports its connections to `stats`."""

    class Counting(smtp_class):
        # STARTTLS makes aiosmtpd call connection_made again for the
        # encrypted transport: one connection is counted once.
        _counted = False

        def connection_made(self, transport):
            if not self._counted:
                self._counted = True
                stats.connected()
            super().connection_made(transport)

        def connection_lost(self, exc):
            if self._counted:
                self._counted = False
                stats.disconnected()
            super().connection_lost(exc)

    return Counting


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--defer-first", type=int, default=0)
    parser.add_argument("--refuse-first", type=int, default=0)
    parser.add_argument("--drop-after-data", type=int, default=0)
    parser.add_argument("--delay-data", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stats")
    args = parser.parse_args()

    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stats = Stats(args.stats)
    stats.write()
    handler = Spool(args.spool, args.defer_first, args.drop_after_data, args.delay_data, stats)
    smtp_class = refusing(counting(SMTP, stats), Refusals(args.refuse_first))

    def factory():
        return smtp_class(
            handler,
            hostname="licensync-test-sink",
            tls_context=tls_context,
            require_starttls=tls_context is not None,
            authenticator=authenticator if args.user else None,
            auth_required=bool(args.user),
            auth_require_tls=tls_context is not None,
            loop=loop,
        )

    server = loop.run_until_complete(
        loop.create_server(factory, host="127.0.0.1", port=args.port, reuse_address=True)
    )
    print(server.sockets[0].getsockname()[1], flush=True)

    def on_stdin():
        if not sys.stdin.buffer.read1(4096):
            loop.stop()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    loop.run_forever()
    server.close()


if __name__ == "__main__":
    main()
