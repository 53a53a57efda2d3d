"""The contrastive / ranking family: in-batch losses (``losses``) and negative samplers (``samplers``)."""
