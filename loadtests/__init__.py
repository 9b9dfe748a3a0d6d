"""Load generators and benchmark scenarios against a running loradock server and against raw vLLM."""
