"""Encoder plugins: small CPU encoders and fixed feature extractors (``small``)."""
