"""LaTeX text helpers: escaping and number cells (booktabs tables; see tables.py).

Numbers are printed with a fixed number of decimals; ``-0.00`` is printed as ``0.00``. Signed
differences (Δ columns) are printed in math mode with an explicit sign, as ``$-0.12$`` or
``$+0.03$``, so the minus sign is a real minus and not a hyphen.
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
import re

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"$<$", ">": r"$>$",
            # a few non-ASCII characters that plain pdflatex (utf8 input, OT1/T1 fonts) cannot set
            "±": r"$\pm$", "Δ": r"$\Delta$", "γ": r"$\gamma$", "λ": r"$\lambda$", "β": r"$\beta$",
            "–": "--", "—": "---", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$"}
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def escape(text: object) -> str:
    """Escape LaTeX special characters of plain text (entry names, row labels, info cells).

    Unicode superscript digits (citation marks such as ``Jang et al. ⁹``) become ``\\textsuperscript``.
    """
    out = []
    for ch in str(text):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch in "⁰¹²³⁴⁵⁶⁷⁸⁹":
            out.append(r"\textsuperscript{" + ch.translate(_SUPERSCRIPTS) + "}")
        else:
            out.append(ch)
    return "".join(out)


def fmt(value: float, digits: int) -> str:
    """``value`` with `digits` decimals, halves rounded away from zero on its shortest decimal form
    (0.625 → 0.63, 0.875 → 0.88, as a reader rounds; Python's format rounds exact binary halves to
    even); NaN → ``--``; negative zero → ``0.00``."""
    if value is None or not math.isfinite(value):
        return "--"
    text = f"{Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP):f}"
    return f"{0.0:.{digits}f}" if float(text) == 0.0 else text


def real_minus(text: str) -> str:
    """A cell's numbers with a real minus sign: ``-0.24`` → ``$-$0.24`` (a hyphen otherwise)."""
    return re.sub(r"(?<![\w$])-(?=\d)", "$-$", text)


def displayed(value: float, digits: int) -> float:
    """The value as it is displayed (rounded to `digits`); NaN stays NaN. Emphasis compares these."""
    if value is None or not math.isfinite(value):
        return math.nan
    return float(fmt(value, digits))


def signed(value: float, digits: int) -> str:
    """A difference with an explicit sign: ``-0.12``/``+0.03``/``0.00`` (``--`` for NaN)."""
    text = fmt(value, digits)
    if text == "--" or float(text) == 0.0:
        return text
    return text if text.startswith("-") else "+" + text
