import sys

from caffeinit.cli import main

sys.exit(main())
