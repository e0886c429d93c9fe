"""One router per resource: label, retrain, jobs, models, health."""
