import sys

from mistral_hub.cli.main import main

sys.exit(main())
