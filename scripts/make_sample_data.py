#!/usr/bin/env python3
"""Regenerate ``sample_data/`` (byte-identical) from the MNI ICBM152 2009a template in the nilearn wheel.

    pip install -e ".[data]"            # nilearn ships the template; nothing is downloaded
    python scripts/make_sample_data.py  # [--out DIR] [--only CASE_ID ...] [--no-dicom]

All the logic lives in `medinvert.data.sample` (writing) and `medinvert.data.synth` (synthesis);
see docs/data.md for what each file is and which are held out from training.
"""

import sys

from medinvert.data.sample import main

if __name__ == "__main__":
    sys.exit(main())
