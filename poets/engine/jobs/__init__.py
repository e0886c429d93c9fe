"""A retraining job, from submit to its published version.

``submit`` (validate, bring the dataset in, scan it, record and enqueue the job),
``run`` (one delivery of a queued job, every outcome written to its record),
``progress`` (what a running job writes to its record and reads back from it),
``dataset`` (where a job's dataset comes from and what it may not lead out of), and
``history`` (the training curves in the record). The API's route and the Celery task
only host them; nothing here imports FastAPI or Celery.
"""
