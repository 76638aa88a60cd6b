import sys

from medrecon.cli.main import main

sys.exit(main())
