import sys

from netbootd.cli import main

sys.exit(main())
