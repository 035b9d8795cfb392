"""Help texts of the CLI shared by its subcommands: exit codes, environment, examples."""

from __future__ import annotations

EXIT_CODES_HELP = """\
exit codes:
  0    complete: every row delivered (validate, --dry-run: nothing wrong found)
  1    failed (undeliverable after retries, unreadable source): the checkpoint holds
       exactly what was delivered; rerun to resume
  2    configuration or preflight error (flags, environment variables, mapping, the
       30-day window, a locked job): nothing was sent; also --sink moesif when Moesif
       refused a batch for good (400/401/402/406) before anything was committed
  3    complete, but rows were rejected (listed in the rejects file)
  130  interrupted (Ctrl-C, SIGINT); 143: terminated (SIGTERM); rerun to resume"""

ENV_HELP = """\
environment:
  every option that configures a run can also be set as MOESIF_BACKFILL_<OPTION>
  (shown as [$VAR] beside each option; e.g. MOESIF_BACKFILL_CHUNK_ROWS=5000,
  MOESIF_BACKFILL_STREAM=a,b for a repeatable option, booleans true/false/1/0/yes/no).
  The command line wins. Not the one-shot options --reset, --reprocess, --dry-run."""

TOP_EXAMPLES = """\
examples:
  moesif-backfill validate exports/ --mapping mapping.yaml
  moesif-backfill run exports/ --mapping mapping.yaml --stream moesif-actions \\
      --checkpoint s3://my-state/moesif-backfill/ --exclude '*.txt'"""

RUN_EXAMPLES = """\
examples:
  # preview: write what would be sent, no AWS call
  moesif-backfill run invoices.csv --mapping mapping.yaml --dry-run --out preview/
  # send; the same command again resumes after an interruption (exit 1, 130, 143)
  MOESIF_BACKFILL_STREAM=moesif-actions moesif-backfill run s3://exports/2025/ \\
      --mapping mapping.yaml --checkpoint s3://my-state/moesif-backfill/"""

DAYS_EXAMPLES = """\
examples:
  moesif-backfill nightly 's3://exports/dt={date:%Y-%m-%d}/' --mapping mapping.yaml \\
      --job nightly --stream moesif-actions --checkpoint s3://my-state/moesif-backfill/
  moesif-backfill range 's3://exports/dt={date:%Y-%m-%d}/' --mapping mapping.yaml \\
      --job nightly --stream moesif-actions --start 2026-11-01 --end 2026-11-07"""


def epilog(*parts: str) -> str:
    return "\n\n".join(parts)


__all__ = ["DAYS_EXAMPLES", "ENV_HELP", "EXIT_CODES_HELP", "RUN_EXAMPLES", "TOP_EXAMPLES", "epilog"]
