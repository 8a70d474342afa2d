"""Formulas: the small expression language of variables, limits and rules.

The public face is ``controller.formulas.language`` (compile, check, evaluate, order); the
stages are ``cfos_syntax`` (cFos operators to Python), ``compiler`` (the allow-list and
asteval), ``evaluation`` (one cycle's formulas in dependency order) and ``symbols`` (device
readings and the time as the names a formula reads). Import from ``controller.formulas``.
"""

from controller.formulas.language import (
    FUNCTIONS,
    MAX_ABS_NUMBER,
    MAX_BRACKET_DEPTH,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_TERNARIES,
    NAME_RE,
    NO_LIMIT,
    TIME_SYMBOLS,
    Evaluator,
    Formula,
    FormulaError,
    FormulaText,
    NoValue,
    NumberRangeError,
    check_name,
    compile_formula,
    evaluation_order,
    number_problem,
    translate,
    validate_formula,
)

__all__ = [
    "FUNCTIONS",
    "MAX_ABS_NUMBER",
    "MAX_BRACKET_DEPTH",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_TERNARIES",
    "NAME_RE",
    "NO_LIMIT",
    "TIME_SYMBOLS",
    "Evaluator",
    "Formula",
    "FormulaError",
    "FormulaText",
    "NoValue",
    "NumberRangeError",
    "check_name",
    "compile_formula",
    "evaluation_order",
    "number_problem",
    "translate",
    "validate_formula",
]
