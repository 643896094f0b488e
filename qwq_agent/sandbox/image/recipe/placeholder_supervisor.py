"""Stand-in (shipped as boot.py) used only while the package qwq_agent/sandbox/supervisor/ does not exist."""

import sys

sys.stderr.write("qwq-agent sandbox: no supervisor in this image (built from the placeholder)\n")
sys.exit(2)
