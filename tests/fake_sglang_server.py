"""A stand-in for SGLang's launcher in `qwq-agent serve --command`: it logs loading progress, then serves
(the scripted model server) once the file named by its first argument exists, so a test decides when."""

from __future__ import annotations

import os
import sys
import time

from qwq_agent.testing.scripted_server import main

if __name__ == "__main__":
    trigger, port = sys.argv[1], sys.argv[2]
    for i in (1, 2, 3):
        print(f"Loading safetensors checkpoint shards: {i}/3", flush=True)
    while not os.path.exists(trigger):
        time.sleep(0.05)  # polls a file the test creates; the test itself waits on output, not time
    print("The server is fired up and ready to roll!", flush=True)
    sys.exit(main(["--port", port]))
