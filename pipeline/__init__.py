"""The plain-Python pipeline core: plan, engine, run, shards, days; no Prefect import."""
