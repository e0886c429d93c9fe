"""The model store (versions, current, pins) and the job records."""
