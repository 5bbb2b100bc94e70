"""Verifiable quality rewards: math answers (math-verify) and instruction checks (if-verifiable)."""

from persyn_hub.verifiers.instructions import InstructionVerdict, check_instructions
from persyn_hub.verifiers.math_answer import MathVerdict, check_math_answer, gold_number

__all__ = ["InstructionVerdict", "MathVerdict", "check_instructions", "check_math_answer", "gold_number"]
