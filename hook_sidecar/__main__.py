import sys

from hook_sidecar.startup import main

sys.exit(main())
