"""The grounding family (Zhang, Choi, Han & Liu 2021): match-map contrastive learning between image
locations and caption tokens, cross-attention grounding of object phrases, and the bilinear relation
module."""
