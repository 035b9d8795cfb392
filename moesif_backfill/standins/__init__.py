"""moesif_backfill/standins"""
