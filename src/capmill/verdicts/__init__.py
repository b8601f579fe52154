"""What a judge model answers, read strictly, and the seeded orders it sees (see `parse`, `order`)."""

from capmill.verdicts.order import bias_rate, checks_bias, pair_orders, permutation
from capmill.verdicts.parse import TIE, parse_choice, parse_grade, parse_pair

__all__ = ["TIE", "bias_rate", "checks_bias", "pair_orders", "parse_choice", "parse_grade", "parse_pair", "permutation"]
