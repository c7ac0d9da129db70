"""Built-in tasks: ``arithmetic`` (generated) and ``gsm8k`` (an adapter for the user's GSM8K file)."""
