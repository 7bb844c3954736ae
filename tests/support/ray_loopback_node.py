"""`ray start` for a worker node joining a head that listens on 127.0.0.1 only.

Ray rewrites a 127.0.0.1 head address to this machine's routable IP before a node
joins (right for real machines, where the head listens there), and refuses to add a
node at all while clustering is disabled. A head kept on loopback is reachable only at
127.0.0.1, so this keeps the address as given; everything else is plain `ray start`.
"""

import sys

from ray._private import services
from ray.scripts.scripts import main

services.resolve_ip_for_localhost = lambda host: host

if __name__ == "__main__":
    sys.exit(main())
