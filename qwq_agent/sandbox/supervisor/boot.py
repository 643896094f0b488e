"""Entry point inside the image: `python3 -I -u /opt/qwq/supervisor/boot.py` (the supervisor) and
`python3 -u /opt/qwq/supervisor/boot.py --worker` (the interpreter, as the user).

`-I` keeps the workspace, PYTHON* variables and user site-packages out of the supervisor's imports, so
the package's parent directory is put on the path here. The interpreter takes these folders off its
path again (and the package out of `sys.modules`) before it runs a cell: see `worker._as_a_notebook`.
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
