"""The agentic workflow: plans, slot filling, policy gate, PII redaction, handoff and audit.

Pure Python with no Ray import, so the turn logic is testable in-process; `app.py` wraps it in
Serve deployments.
"""
