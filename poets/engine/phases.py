"""The phases of a retrain, named once, in the order a job goes through them.

Retrain reports each in its progress events (``{"phase": ...}``); a job's record shows the
latest (``GET /jobs/{id}``), and ``poets retrain`` draws its progress bars from them. No
TensorFlow here: the CLI reads these before it knows whether it trains.
"""

SCANNING = "scanning"
BOTTLENECKS = "bottlenecks"
TRAINING = "training"
EVALUATING = "evaluating"
CROSS_VALIDATING = "cross_validating"  # only with cross_validate
JUDGING = "judging"  # the promotion gate: the candidate against the version now serving
EXPORTING = "exporting"
PUBLISHED = "published"

PHASES = (SCANNING, BOTTLENECKS, TRAINING, EVALUATING, CROSS_VALIDATING, JUDGING, EXPORTING, PUBLISHED)
