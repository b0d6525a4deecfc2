"""Names of the labeling app's job kinds (stored in ``Job.kind``; registered in ``labeling/jobs.py``)."""
LABEL = "label"  # a labeling run: it fans out into chunks
LABEL_CHUNK = "label_chunk"
