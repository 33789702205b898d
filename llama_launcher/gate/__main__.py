"""``python -m llama_launcher.gate``: the gate process, started by ``llama-direct serve``."""

import sys

from llama_launcher.gate.main import main

sys.exit(main())
