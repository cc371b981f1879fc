"""The ``semcodec`` shell command (click)."""
