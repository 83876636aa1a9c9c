"""``python -m shardproxy`` is the same as the ``shardproxy`` console script."""

import sys

from shardproxy.app.cli import main

sys.exit(main())
