"""HL7 v2 over MLLP: a listener (source), a client (destination) and `send_messages` for the CLI.

Framing lives in engine.hl7v2.mllp, ACK building in engine.hl7v2.ack; this module is the sockets,
TLS, allow-lists, timeouts and the mapping between what the engine did (Outcome) and what the peer
is told (ACK). Logs and exceptions carry connection ids, peers, sizes and ACK codes — never
message content, field values or control ids.
"""

from engine.connectors.mllp.client import AckInfo, AckResult, MllpDestination, parse_ack, send_messages
from engine.connectors.mllp.config import MllpDestinationConfig, MllpSourceConfig
from engine.connectors.mllp.source import MllpSource
from engine.hl7v2.ack import new_ack_control_id

__all__ = [
    "AckInfo",
    "AckResult",
    "MllpDestination",
    "MllpDestinationConfig",
    "MllpSource",
    "MllpSourceConfig",
    "new_ack_control_id",
    "parse_ack",
    "send_messages",
]
