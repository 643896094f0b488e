"""Entry point inside the image: `python3 -I -u /opt/qwq/supervisor/boot.py [--worker]`.

`-I` keeps the workspace, PYTHON* variables and user site-packages out of the supervisor's imports, so
the package's parent directory is put on the path here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if len(sys.argv) > 1 and sys.argv[1] == "--worker":
    from supervisor.worker import worker_main

    worker_main()
else:
    from supervisor.server import main

    main()
