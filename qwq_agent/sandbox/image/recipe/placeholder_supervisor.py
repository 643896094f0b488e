"""Stand-in used only while qwq_agent/sandbox/supervisor.py does not exist yet."""

import sys

sys.stderr.write("qwq-agent sandbox: no supervisor in this image (built from the placeholder)\n")
sys.exit(2)
