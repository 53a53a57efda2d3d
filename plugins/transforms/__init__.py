"""Training-time transforms of the raw images: gaze masking (Podguzova & Nguyen 2020) and SimCLR-style augmentations."""
