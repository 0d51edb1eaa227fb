"""A downstream HL7 system for the tests, built on python-hl7's MLLP server (not our code).

    python tests/e2e/downstream.py PORT LOGFILE [MESSAGES]

ACKs every message AA and appends its MSH-10 to LOGFILE (fsynced before the ACK), so a test can
count exactly what arrived, even across restarts of this process; with MESSAGES, each whole message
too (segments CR-separated, one message per line).
"""

import asyncio
import os
import sys

import hl7
from hl7.mllp import start_hl7_server


async def main(port: int, log_path: str, messages_path: str | None) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the process lifetime
    whole = open(messages_path, "a", buffering=1) if messages_path else None  # noqa: SIM115

    async def handle(reader, writer) -> None:  # type: ignore[no-untyped-def]
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                if whole is not None:
                    whole.write(str(message).replace("\n", "\r") + "\n")
                    whole.flush()
                log.write(str(message.segment("MSH")[10]) + "\n")
                log.flush()
                os.fsync(log.fileno())
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await start_hl7_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    _ = hl7
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
