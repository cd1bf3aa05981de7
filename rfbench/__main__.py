import sys

from rfbench.cli import main

sys.exit(main())
