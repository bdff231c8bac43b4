"""PII redaction before any LLM prompt, log line or audit record.

Patterns are deliberately broad (a false positive costs a word, a false negative leaks data);
card numbers must pass the Luhn check so that order ids and amounts survive.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Anything shaped like local@domain.tld: RFC 5322 allows far more than [\w.+-] in the local
# part (apostrophes included: o'brien@example.com).
EMAIL = re.compile(r"[^\s@\"<>(),;:]+@[^\s@\"'<>(),;:]+\.[^\s@\"'<>(),;:]+")
# 13-19 digits, optionally grouped by spaces or dashes.
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# International or national numbers with separators; at least 7 digits in total.
PHONE = re.compile(
    r"(?<![\w])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])"
)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _phone(match: re.Match[str]) -> str:
    if ISO_DATE.fullmatch(match.group()):  # delivery dates are not phone numbers
        return match.group()
    digits = re.sub(r"\D", "", match.group())
    return "[PHONE]" if len(digits) >= 7 else match.group()


_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (EMAIL, lambda m: "[EMAIL]"),
    (IBAN, lambda m: "[IBAN]"),
    (CARD, _card),
    (PHONE, _phone),
)


def redact(text: str) -> str:
    """`text` with emails, IBANs, card numbers and phone numbers replaced by placeholders."""
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return text


def redact_value(value: object) -> object:
    """Redact every string inside a JSON-like value (dicts, lists, scalars)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value
