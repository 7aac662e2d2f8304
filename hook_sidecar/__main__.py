import sys

from hook_sidecar.cli import main

sys.exit(main())
