"""Time and choice: a runtime model per mixture, the search for the fastest fitting mixture, and the
study's model x context matrix for any GPU. No torch."""

from ftmix.plan.constants import DEFAULT, RuntimeConstants, load_calibration
from ftmix.plan.matrix import Cell, matrix
from ftmix.plan.runtime import STUDY_EFFECTIVE_BATCH, StepTime, step_time
from ftmix.plan.search import Candidate, Plan, candidates, plan

__all__ = ["Candidate", "Cell", "DEFAULT", "Plan", "RuntimeConstants", "STUDY_EFFECTIVE_BATCH", "StepTime",
           "candidates", "load_calibration", "matrix", "plan", "step_time"]
