"""`python -m curation.report OUTPUT --html report.html`: the analyst report (job.py)."""

from curation.report.job import main

raise SystemExit(main())
