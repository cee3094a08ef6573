#!/usr/bin/env python3
"""A real SMTP server for Tally's tests, built on aiosmtpd, listening on 127.0.0.1 only.

    smtp_server.py --out FILE [--port PORT] [--reject ADDRESS]... [--greylist ADDRESS]...

--port defaults to 0, a free port chosen by the system. Once the server accepts connections
it prints "LISTENING <port>" on a line of its own to standard output.

Every message accepted is appended to FILE as one JSON line, written and flushed before the
server answers DATA, so a client that saw "250" can read it at once:

    mail_from     the envelope sender
    rcpt_tos      the envelope recipients
    data          the raw message, as received
    headers       [[name, value], ...] in order, values decoded (RFC 2047) by Python's email
    subject, to   decoded header values (or null)
    header_addresses  every address of the To, Cc and Bcc headers, as Python parses them
    content_type  the top-level content type
    text, html    the text/plain and text/html bodies, decoded (or null)

RCPT TO an address given with --reject is answered 550 (a permanent refusal); one given with
--greylist is answered 451 (greylisting, a transient one). Both may be repeated.

The server stops when its standard input closes, so it never outlives the test that started it,
and on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import email
import email.policy
import json
import signal
import sys
import threading

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, out, reject, greylist):
        self.out = out
        self.reject = {address.lower() for address in reject}
        self.greylist = {address.lower() for address in greylist}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.lower() in self.greylist:
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.out.write(json.dumps(record(envelope)) + "\n")
        self.out.flush()
        return "250 2.0.0 OK: queued as test"


def record(envelope):
    raw = envelope.original_content or envelope.content
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return {
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "data": raw.decode("utf-8", errors="replace"),
        "headers": [[name, str(value)] for name, value in message.items()],
        "subject": header(message, "Subject"),
        "to": header(message, "To"),
        "header_addresses": header_addresses(message),
        "content_type": message.get_content_type(),
        "text": body(message, "plain"),
        "html": body(message, "html"),
    }


def header(message, name):
    value = message.get(name)
    return None if value is None else str(value)


def header_addresses(message):
    addresses = []
    for name in ("To", "Cc", "Bcc"):
        for value in message.get_all(name, []):
            addresses.extend(address.addr_spec for address in value.addresses)
    return addresses


def body(message, subtype):
    part = message.get_body(preferencelist=(subtype,))
    return None if part is None else part.get_content()


async def serve(arguments):
    out = open(arguments.out, "a", encoding="utf-8")
    handler = Handler(out, arguments.reject, arguments.greylist)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="tally-test-smtp", enable_SMTPUTF8=True),
        host="127.0.0.1",
        port=arguments.port,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)

    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    threading.Thread(target=wait_for_stdin_to_close, args=(loop, stop), daemon=True).start()

    await stop.wait()
    server.close()
    await server.wait_closed()
    out.close()


def wait_for_stdin_to_close(loop, stop):
    while sys.stdin.buffer.read(4096):
        pass
    loop.call_soon_threadsafe(stop.set)


def main():
    parser = argparse.ArgumentParser(description="An SMTP server for tests, on 127.0.0.1.")
    parser.add_argument("--out", required=True, help="where to append received messages")
    parser.add_argument("--port", type=int, default=0, help="0 for a free port")
    parser.add_argument("--reject", action="append", default=[], help="answer 550 to this")
    parser.add_argument("--greylist", action="append", default=[], help="answer 451 to this")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
