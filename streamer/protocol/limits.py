"""Every limit and default that the server, the client and the dashboard share (pure constants).

One home for the facts both ends of the wire must agree on: the audio a sender may push, the
address a client connects to by default, the label shown when no class is clear. The dashboard
receives the values it needs in the server's ``hello`` message instead of copying them.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_EVENTS_URL",
    "DEFAULT_HOST",
    "DEFAULT_INGEST_URL",
    "DEFAULT_PORT",
    "EVENTS_PATH",
    "INGEST_BYTES_PER_SAMPLE",
    "INGEST_FORMATS",
    "INGEST_PATH",
    "MAX_INGEST_CHANNELS",
    "MAX_INGEST_RATE_HZ",
    "MAX_INPUT_RATE_HZ",
    "MIN_INGEST_RATE_HZ",
    "MIN_INPUT_RATE_HZ",
    "UNCERTAIN",
]

#: sample rates a local source (sound card, file) may have; everything is resampled to 16 kHz
MIN_INPUT_RATE_HZ = 8_000
MAX_INPUT_RATE_HZ = 192_000

#: pushed audio (``/ingest``): sample rates, channels and sample formats a sender may use
MIN_INGEST_RATE_HZ = 8_000
MAX_INGEST_RATE_HZ = 48_000
MAX_INGEST_CHANNELS = 2
#: sample format -> bytes per sample (little-endian, interleaved channels)
INGEST_BYTES_PER_SAMPLE: dict[str, int] = {"s16le": 2, "f32le": 4}
INGEST_FORMATS = tuple(INGEST_BYTES_PER_SAMPLE)

#: where the server listens by default (loopback only) and its endpoint paths
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
EVENTS_PATH = "/ws"
INGEST_PATH = "/ingest"
DEFAULT_EVENTS_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{EVENTS_PATH}"
DEFAULT_INGEST_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{INGEST_PATH}"

#: the smoothed label when no class is clear enough
UNCERTAIN = "uncertain"
