"""moesif-backfill: historical and nightly billing/usage data into Moesif actions via Firehose."""

import time

__version__ = "0.1.0"

# When this process started doing moesif-backfill work: summaries report the fixed start-up cost
# (imports, Prefect's API, flow-run creation) as the time from here to the pipeline's start.
PROCESS_T0 = time.monotonic()
