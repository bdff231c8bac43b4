"""Intent classification: a MiniLM encoder with a classification head, trained offline."""
