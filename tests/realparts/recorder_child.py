"""Child process: record the default input with sounddevice until enough audio came back.

Run as ``python recorder_child.py OUT.wav RATE MIN_S MAX_S`` in the PulseAudio environment.
Prints ``recording`` once the first block arrived, then writes OUT.wav when it has recorded
MAX_S seconds, or MIN_S seconds of which the last 0.5 s were quiet after something loud.
Lives in its own process because PortAudio lists devices when sounddevice is imported.
"""

from __future__ import annotations

import queue
import sys

import numpy as np
import sounddevice as sd
import soundfile as sf


def main() -> int:
    out, rate, min_s, max_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=1000)

    def callback(indata, frames, time, status) -> None:  # noqa: ARG001 - sounddevice signature
        blocks.put_nowait(indata[:, 0].copy())

    got: list[np.ndarray] = []
    heard = False
    with sd.InputStream(samplerate=rate, channels=1, dtype="float32", callback=callback):
        got.append(blocks.get(timeout=30))
        print("recording", flush=True)
        while True:
            block = blocks.get(timeout=30)
            got.append(block)
            total = sum(len(b) for b in got)
            heard = heard or float(np.max(np.abs(block))) > 0.05
            tail = np.concatenate(got)[-rate // 2:]
            if total >= max_s * rate:
                break
            if heard and total >= min_s * rate and float(np.max(np.abs(tail))) < 0.01:
                break
    sf.write(out, np.concatenate(got), rate)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
