import sys

from anyorder.cli.main import main

sys.exit(main())
