"""The chain of one violation, free of Prefect: fetch-violation -> trigger-testkube -> await-result ->
annotate-report, with its dependencies handed in (:mod:`.deps`), the steps' I/O (:mod:`.steps`) and the
one chain that runs them (:mod:`.run`). Prefect's task runs wrap these steps in ``tasks/``."""
