"""Stage code for the data pipeline; each module runs as ``python -m data.scripts.<stage>``."""
