"""``python -m gatedelta.train CONFIG ...`` (what torchrun launches: ``torchrun ... -m gatedelta.train``)."""

import sys

from .cli import main

sys.exit(main())
